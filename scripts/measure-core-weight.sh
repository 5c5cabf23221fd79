#!/usr/bin/env bash
# What a thread-pool user pays for the core crate: two one-file programs, side by side in one
# run, each offloading one closure from smol with a serde-derived value in it,
#   - on smol-offload's ThreadPool (this repository's crates/smol-offload, as a path dependency),
#   - on blocking::unblock,
# and for each the crates in its normal and build dependency tree and the time of a cold
# `cargo build --release` from an empty target directory. Prints both and the ratios.
#
#   scripts/measure-core-weight.sh
#
# Both programs use the versions of this repository's Cargo.lock, and their sources are
# fetched before the clock starts. Not part of CI: it builds twice from scratch (minutes).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== the core's normal dependency tree has none of the remote pool's crates"
if cargo tree --manifest-path "$root/Cargo.toml" -p smol-offload -e normal --prefix none \
    | grep -E '^(redis|rustls|ring|hmac|sha2|signal-hook) '; then
    echo "the core depends on a crate that only the remote pool needs" >&2
    exit 1
fi
echo "none of redis, rustls, ring, hmac, sha2, signal-hook"

# new_user NAME DEPENDENCY-LINE MAIN-BODY
new_user() {
    local dir="$work/$1"
    mkdir -p "$dir/src"
    cat >"$dir/Cargo.toml" <<EOF
[package]
name = "$1"
version = "0.1.0"
edition = "2024"
publish = false

[dependencies]
$2
smol = "2"
serde = { version = "1", features = ["derive"] }

[workspace]
EOF
    cat >"$dir/src/main.rs" <<EOF
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Job {
    n: u64,
}

fn main() {
    let job = Job { n: 7 };
$3
    assert_eq!(square, 49);
    println!("{job:?} squared is {square}");
}
EOF
    cp "$root/Cargo.lock" "$dir/Cargo.lock"
    cargo fetch --quiet --manifest-path "$dir/Cargo.toml"
}

new_user offload-user "smol-offload = { path = \"$root/crates/smol-offload\" }" \
'    let pool = smol_offload::ThreadPool::new(2).unwrap();
    let n = job.n;
    let square = smol::block_on(pool.spawn(move || n * n)).unwrap();'
new_user blocking-user 'blocking = "1.6"' \
'    let n = job.n;
    let square = smol::block_on(blocking::unblock(move || n * n));'

crates() {
    cargo tree --manifest-path "$work/$1/Cargo.toml" -e normal,build --prefix none --no-dedupe \
        | sed -e 's/ (\*)$//' -e 's/ (proc-macro)$//' | sort -u | grep -vc "^$1 "
}

cold_build_seconds() {
    local target="$work/$1/target"
    rm -rf "$target"
    local start end
    start=$(date +%s.%N)
    cargo build --quiet --release --manifest-path "$work/$1/Cargo.toml" --target-dir "$target"
    end=$(date +%s.%N)
    "$target/release/$1" >/dev/null
    echo "$end - $start" | bc
}

echo "== cold release builds, one after the other, on $(nproc) CPUs"
blocking_crates=$(crates blocking-user)
offload_crates=$(crates offload-user)
blocking_seconds=$(cold_build_seconds blocking-user)
offload_seconds=$(cold_build_seconds offload-user)

printf '%-28s %8s %14s\n' "user of" crates "cold build s"
printf '%-28s %8d %14.1f\n' "blocking + smol + serde" "$blocking_crates" "$blocking_seconds"
printf '%-28s %8d %14.1f\n' "smol-offload + smol + serde" "$offload_crates" "$offload_seconds"
printf '%-28s %8.2fx %13.2fx   (targets: at most 1.5x and 2x)\n' "ratio" \
    "$(echo "$offload_crates / $blocking_crates" | bc -l)" \
    "$(echo "$offload_seconds / $blocking_seconds" | bc -l)"
