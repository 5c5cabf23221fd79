#!/usr/bin/env python3
"""Lists a crate's public API, one item a line, from rustdoc's JSON output.

    scripts/public-api.py smol-offload            # print it
    scripts/public-api.py --write smol-offload    # write crates/smol-offload/public-api.txt
    scripts/public-api.py --check smol-offload    # fail (and show the diff) when it differs

The list is what `cargo public-api` prints, in a simpler form: every public item under its
path (modules, types with their public fields and variants, functions and methods with their
signatures, constants, traits with their items) and every trait a type implements by hand.
Items hidden from the docs are left out. It fails when one item is exported under two paths.

rustdoc's JSON output is unstable: it is made by the repository's own toolchain with
RUSTC_BOOTSTRAP=1, in target/public-api, with every feature of the crate on.
"""

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rustdoc_json(package):
    target = ROOT / "target" / "public-api"
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    env.pop("RUSTDOCFLAGS", None)
    subprocess.run(
        ["cargo", "rustdoc", "--quiet", "--locked", "-p", package, "--lib", "--all-features",
         "--target-dir", str(target), "--", "-Z", "unstable-options", "--output-format", "json"],
        cwd=ROOT, env=env, check=True)
    return json.loads((target / "doc" / (package.replace("-", "_") + ".json")).read_text())


class Api:
    def __init__(self, doc):
        self.index = doc["index"]
        self.paths = doc["paths"]
        self.lines = []
        self.exported = {}

    def item(self, id_):
        return self.index.get(str(id_))

    # Types -----------------------------------------------------------------------------

    def path_of(self, path):
        known = self.paths.get(str(path.get("id")))
        name = self.exported.get(path.get("id"))
        if name is None:
            name = "::".join(known["path"]) if known else path["path"]
        return name + self.args(path.get("args"))

    def args(self, args):
        if not args:
            return ""
        if "parenthesized" in args:
            p = args["parenthesized"]
            out = " -> " + self.ty(p["output"]) if p.get("output") else ""
            return "(" + ", ".join(self.ty(t) for t in p["inputs"]) + ")" + out
        if "angle_bracketed" not in args:
            return ""
        a = args["angle_bracketed"]
        parts = []
        for arg in a["args"]:
            if "type" in arg:
                parts.append(self.ty(arg["type"]))
            elif "lifetime" in arg:
                parts.append(arg["lifetime"])
            elif "const" in arg:
                parts.append(arg["const"].get("expr", "_"))
            else:
                parts.append("_")
        for c in a.get("constraints", []):
            binding = c["binding"]
            if "equality" in binding:
                term = binding["equality"]
                value = self.ty(term["type"]) if "type" in term else str(term)
                parts.append(f"{c['name']} = {value}")
            else:
                parts.append(f"{c['name']}: {self.bounds(binding['constraint'])}")
        return "<" + ", ".join(parts) + ">" if parts else ""

    def ty(self, t):
        if t is None:
            return "()"
        (kind, v), = t.items()
        if kind == "resolved_path":
            return self.path_of(v)
        if kind in ("generic", "primitive"):
            return v
        if kind == "borrowed_ref":
            life = v["lifetime"] + " " if v.get("lifetime") else ""
            return "&" + life + ("mut " if v["is_mutable"] else "") + self.ty(v["type"])
        if kind == "raw_pointer":
            return ("*mut " if v["is_mutable"] else "*const ") + self.ty(v["type"])
        if kind == "tuple":
            return "(" + ", ".join(self.ty(x) for x in v) + ("," if len(v) == 1 else "") + ")"
        if kind == "slice":
            return "[" + self.ty(v) + "]"
        if kind == "array":
            return "[" + self.ty(v["type"]) + "; " + v["len"] + "]"
        if kind == "impl_trait":
            return "impl " + self.bounds(v)
        if kind == "dyn_trait":
            traits = [self.poly(p) for p in v["traits"]]
            if v.get("lifetime"):
                traits.append(v["lifetime"])
            return "dyn " + " + ".join(traits)
        if kind == "function_pointer":
            sig = v["sig"]
            ins = ", ".join(self.ty(x[1]) for x in sig["inputs"])
            out = " -> " + self.ty(sig["output"]) if sig.get("output") else ""
            return f"fn({ins}){out}"
        if kind == "qualified_path":
            trait = self.path_of(v["trait"]) if v.get("trait") else None
            self_ty = self.ty(v["self_type"])
            base = f"<{self_ty} as {trait}>" if trait else self_ty
            return base + "::" + v["name"] + self.args(v.get("args"))
        if kind == "infer":
            return "_"
        return json.dumps(t, sort_keys=True)

    def poly(self, p):
        return self.hrtb(p.get("generic_params")) + self.path_of(p["trait"])

    def hrtb(self, params):
        names = [g["name"] for g in params or []]
        return "for<" + ", ".join(names) + "> " if names else ""

    def bounds(self, bounds):
        out = []
        for b in bounds:
            if "trait_bound" in b:
                tb = b["trait_bound"]
                modifier = {"maybe": "?", "maybe_const": "~const "}.get(tb["modifier"], "")
                out.append(modifier + self.hrtb(tb.get("generic_params")) + self.path_of(tb["trait"]))
            elif "outlives" in b:
                out.append(b["outlives"])
            else:
                out.append(json.dumps(b, sort_keys=True))
        return " + ".join(out)

    def generics(self, g):
        params = []
        for p in g["params"]:
            (kind, v), = p["kind"].items()
            if kind == "lifetime":
                params.append(p["name"] + (": " + " + ".join(v["outlives"]) if v["outlives"] else ""))
            elif kind == "type":
                if v.get("is_synthetic"):
                    continue
                bounds = ": " + self.bounds(v["bounds"]) if v["bounds"] else ""
                default = " = " + self.ty(v["default"]) if v.get("default") else ""
                params.append(p["name"] + bounds + default)
            else:
                params.append("const " + p["name"] + ": " + self.ty(v["type"]))
        return "<" + ", ".join(params) + ">" if params else ""

    def where(self, g):
        preds = []
        for w in g["where_predicates"]:
            if "bound_predicate" in w:
                bp = w["bound_predicate"]
                preds.append(self.hrtb(bp.get("generic_params")) + self.ty(bp["type"]) + ": "
                             + self.bounds(bp["bounds"]))
            elif "lifetime_predicate" in w:
                lp = w["lifetime_predicate"]
                preds.append(lp["lifetime"] + ": " + " + ".join(lp["outlives"]))
            else:
                eq = w["eq_predicate"]
                preds.append(self.ty(eq["lhs"]) + " = " + self.ty(eq["rhs"].get("type")))
        return " where " + ", ".join(preds) if preds else ""

    def function(self, path, f):
        h = f["header"]
        qualifiers = "".join(q for q, on in (("const ", h["is_const"]), ("async ", h["is_async"]),
                                              ("unsafe ", h["is_unsafe"])) if on)
        inputs = []
        for name, t in f["sig"]["inputs"]:
            if name == "self":
                if t == {"generic": "Self"}:
                    inputs.append("self")
                elif "borrowed_ref" in t and t["borrowed_ref"]["type"] == {"generic": "Self"}:
                    inputs.append("&" + ("mut " if t["borrowed_ref"]["is_mutable"] else "") + "self")
                else:
                    inputs.append("self: " + self.ty(t))
            else:
                inputs.append(f"{name}: {self.ty(t)}")
        out = " -> " + self.ty(f["sig"]["output"]) if f["sig"].get("output") else ""
        return (f"pub {qualifiers}fn {path}{self.generics(f['generics'])}({', '.join(inputs)})"
                f"{out}{self.where(f['generics'])}")

    # Items -----------------------------------------------------------------------------

    def emit(self, line):
        self.lines.append(line)

    def module(self, path, module):
        for id_ in module["items"]:
            item = self.item(id_)
            if item is None or item["visibility"] != "public":
                continue
            if "use" in item["inner"]:
                use = item["inner"]["use"]
                target = self.item(use["id"]) if use.get("id") is not None else None
                if target is None:
                    self.emit(f"pub use {path}::{use['name']} = {use['source']}")
                elif use["is_glob"]:
                    self.module(path, target["inner"]["module"])
                else:
                    self.public(f"{path}::{use['name']}", target)
            else:
                self.public(f"{path}::{item['name']}", item)

    def public(self, path, item):
        first = self.exported.setdefault(item["id"], path)
        if first != path:
            sys.exit(f"public-api: {first} is also exported as {path}: export each item once")
        (kind, v), = item["inner"].items()
        if kind == "module":
            self.emit(f"pub mod {path}")
            self.module(path, v)
        elif kind == "function":
            self.emit(self.function(path, v))
        elif kind == "constant":
            self.emit(f"pub const {path}: {self.ty(v['type'])}")
        elif kind == "static":
            self.emit(f"pub static {path}: {self.ty(v['type'])}")
        elif kind == "type_alias":
            self.emit(f"pub type {path}{self.generics(v['generics'])} = {self.ty(v['type'])}")
        elif kind in ("macro", "proc_macro"):
            self.emit(f"pub macro {path}!")
        elif kind == "struct":
            self.emit(f"pub struct {path}{self.generics(v['generics'])}{self.where(v['generics'])}")
            self.fields(path, v["kind"])
            self.impls(path, v["impls"])
        elif kind == "union":
            self.emit(f"pub union {path}{self.generics(v['generics'])}")
            self.fields(path, {"plain": {"fields": v["fields"]}})
            self.impls(path, v["impls"])
        elif kind == "enum":
            self.emit(f"pub enum {path}{self.generics(v['generics'])}{self.where(v['generics'])}")
            for vid in v["variants"]:
                variant = self.item(vid)
                vpath = f"{path}::{variant['name']}"
                vkind = variant["inner"]["variant"]["kind"]
                if vkind == "plain":
                    self.emit(f"pub {vpath}")
                elif "tuple" in vkind:
                    types = [self.ty(self.item(f)["inner"]["struct_field"]) for f in vkind["tuple"] if f is not None]
                    self.emit(f"pub {vpath}({', '.join(types)})")
                else:
                    self.emit(f"pub {vpath}")
                    for fid in vkind["struct"]["fields"]:
                        field = self.item(fid)
                        self.emit(f"pub {vpath}::{field['name']}: {self.ty(field['inner']['struct_field'])}")
            self.impls(path, v["impls"])
        elif kind == "trait":
            bounds = ": " + self.bounds(v["bounds"]) if v["bounds"] else ""
            unsafe = "unsafe " if v["is_unsafe"] else ""
            self.emit(f"pub {unsafe}trait {path}{self.generics(v['generics'])}{bounds}")
            self.assoc_items(path, v["items"], in_trait=True)
        else:
            self.emit(f"pub {kind} {path}")

    def fields(self, path, kind):
        if "plain" in kind:
            for fid in kind["plain"]["fields"]:
                field = self.item(fid)
                if field and field["visibility"] == "public":
                    self.emit(f"pub {path}::{field['name']}: {self.ty(field['inner']['struct_field'])}")
        elif "tuple" in kind:
            for n, fid in enumerate(kind["tuple"]):
                field = self.item(fid) if fid is not None else None
                if field and field["visibility"] == "public":
                    self.emit(f"pub {path}::{n}: {self.ty(field['inner']['struct_field'])}")

    def impls(self, path, impl_ids):
        lines = []
        for iid in impl_ids:
            impl = self.item(iid)["inner"]["impl"]
            if impl["is_synthetic"] or impl.get("blanket_impl"):
                continue
            if impl["trait"] is None:
                sub = Api.__new__(Api)
                sub.__dict__.update(self.__dict__)
                sub.lines = []
                sub.assoc_items(path, impl["items"], in_trait=False)
                lines.extend(sub.lines)
            else:
                negative = "!" if impl["is_negative"] else ""
                unsafe = "unsafe " if impl["is_unsafe"] else ""
                lines.append(f"{unsafe}impl{self.generics(impl['generics'])} {negative}"
                             f"{self.path_of(impl['trait'])} for {self.ty(impl['for'])}"
                             f"{self.where(impl['generics'])}")
        self.lines.extend(sorted(lines))

    def assoc_items(self, path, ids, in_trait):
        for id_ in ids:
            item = self.item(id_)
            if item is None or (not in_trait and item["visibility"] != "public"):
                continue
            ipath = f"{path}::{item['name']}"
            (kind, v), = item["inner"].items()
            if kind == "function":
                self.emit(self.function(ipath, v))
            elif kind == "assoc_type":
                bounds = ": " + self.bounds(v["bounds"]) if v.get("bounds") else ""
                self.emit(f"pub type {ipath}{bounds}")
            elif kind == "assoc_const":
                self.emit(f"pub const {ipath}: {self.ty(v['type'])}")


def public_api(package):
    doc = rustdoc_json(package)
    api = Api(doc)
    root = api.item(doc["root"])
    # Twice: the first walk learns each item's public path, which the second one names it by.
    for _ in range(2):
        api.lines = [f"pub mod {root['name']}"]
        api.module(root["name"], root["inner"]["module"])
    return "".join(line + "\n" for line in api.lines)


def main(args):
    mode = args.pop(0) if args and args[0].startswith("--") else None
    if len(args) != 1 or mode not in (None, "--write", "--check"):
        sys.exit(__doc__)
    package = args[0]
    listing = public_api(package)
    saved = ROOT / "crates" / package / "public-api.txt"
    if mode is None:
        sys.stdout.write(listing)
    elif mode == "--write":
        saved.write_text(listing)
    else:
        old = saved.read_text() if saved.exists() else ""
        if old != listing:
            sys.stdout.writelines(difflib.unified_diff(
                old.splitlines(True), listing.splitlines(True), str(saved), "now"))
            sys.exit(f"public-api: the public API of {package} changed; if that is meant, run "
                     f"scripts/public-api.py --write {package} and commit the file")


if __name__ == "__main__":
    main(sys.argv[1:])
