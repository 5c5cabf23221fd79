//! Whether the workers have the code an [`ErasedCall`] names, checked by `run` before any
//! worker is sent to an address: a forked worker has the code loaded when the fork server was
//! forked, a remote worker only the executable (which its build identity hashes). The loaded
//! objects themselves are listed by `sys::LoadedCode`.

use crate::sys::{self, ErasedCall, LoadedCode};

impl ErasedCall {
    /// The two addresses of the call, each with what it is, for messages.
    fn parts(self) -> [(&'static str, usize); 2] {
        let [trampoline, function] = self.to_wire();
        [
            (
                "the function's trampoline (the code that decodes its argument, compiled into \
                 the crate that called `run`)",
                trampoline as usize,
            ),
            ("the function", function as usize),
        ]
    }

    /// Why a worker forked from the fork server could not run this call, if it could not: an
    /// address that lies in a shared library loaded after the server was forked (`dlopen`), or
    /// in no loaded object, is not that code in a worker, which would jump to whatever is there.
    /// Cheap when both addresses lie in the executable, as they do unless code is loaded
    /// dynamically.
    pub(crate) fn refusal_in_workers(self) -> Option<String> {
        let executable = sys::executable_span();
        if self.parts().iter().all(|(_, at)| executable.contains(at)) {
            return None;
        }
        self.refusal_against(sys::code_of_workers(), &LoadedCode::now())
    }

    /// [`refusal_in_workers`](ErasedCall::refusal_in_workers) for workers forked when the code
    /// loaded was `at_fork` (none: no worker was ever forked), with `now` loaded now.
    #[cold]
    pub(crate) fn refusal_against(
        self,
        at_fork: Option<&LoadedCode>,
        now: &LoadedCode,
    ) -> Option<String> {
        for (what, address) in self.parts() {
            let Some(object) = now.containing(address) else {
                return Some(format!(
                    "cannot run the task in a worker process: {what} at {address:#x} lies in no \
                     loaded object"
                ));
            };
            if now.is_executable(object) {
                continue;
            }
            let forked_with = at_fork.and_then(|code| {
                code.objects
                    .iter()
                    .find(|old| old.path == object.path && old.base == object.base)
                    .map(|_| code.unloaded)
            });
            let path = &object.path;
            match forked_with {
                Some(unloaded) if unloaded == now.unloaded => continue,
                Some(_) => {
                    return Some(format!(
                        "cannot run the task in a worker process: {what} lies in the shared \
                         library {path}, and a library was unloaded since the fork server \
                         started, so this one may not be the code that the workers have at \
                         that address; run the function on a ThreadPool, or keep libraries \
                         loaded"
                    ));
                }
                None => {
                    return Some(format!(
                        "cannot run the task in a worker process: {what} lies in the shared \
                         library {path}, loaded (or reloaded) after the fork server started, so the workers \
                         (forked from that server) do not have it; load the library before \
                         smol_offload::init(), or run the function on a ThreadPool"
                    ));
                }
            }
        }
        None
    }

    /// Why a remote worker could not run this call, if it could not: a job names code by its
    /// offset from a static of the executable, and the build identity covers the executable
    /// only, so the function, its trampoline and that static must all lie in the executable,
    /// not in a shared library (a `dylib` crate, `-C prefer-dynamic`, `dlopen`). Cheap when
    /// they do.
    pub fn remote_refusal(self) -> Option<String> {
        let executable = sys::executable_span();
        let anchor = sys::anchor_address() as usize;
        if executable.contains(&anchor)
            && self.parts().iter().all(|(_, at)| executable.contains(at))
        {
            return None;
        }
        self.remote_refusal_in(&LoadedCode::now())
    }

    /// [`remote_refusal`](ErasedCall::remote_refusal), with `now` loaded now.
    #[cold]
    fn remote_refusal_in(self, now: &LoadedCode) -> Option<String> {
        let anchor = (
            "smol-offload itself (whose static the job's offsets start from)",
            sys::anchor_address() as usize,
        );
        for (what, address) in std::iter::once(anchor).chain(self.parts()) {
            match now.containing(address) {
                Some(object) if now.is_executable(object) => {}
                Some(object) => {
                    return Some(format!(
                        "cannot run the task on remote workers: {what} lies in the shared \
                         library {}, and a job can name only code of the executable, whose \
                         SHA-256 the workers check; link that code into the executable (no \
                         dylib crate, no -C prefer-dynamic)",
                        object.path
                    ));
                }
                None => {
                    return Some(format!(
                        "cannot run the task on remote workers: {what} at {address:#x} lies in \
                         no loaded object"
                    ));
                }
            }
        }
        None
    }
}
