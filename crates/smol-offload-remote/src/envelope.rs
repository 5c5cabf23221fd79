//! What crosses the broker: a signed job on the queue's stream, and a signed reply on the
//! client's reply list, both postcard-encoded.
//!
//! A job names its function by two offsets from a fixed symbol of the executable and carries
//! the SHA-256 of the client's executable; [`verify`] turns one into a [`VerifiedJob`] only if
//! its signature holds, its build is the worker's own, and it is within the replay window.

use serde::{Deserialize, Serialize};

use crate::identity;
use crate::process_pool::raw::Carried;
use crate::security::Security;

/// Any signed message: the encoded body and its HMAC (empty on a trusted network).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Signed {
    pub(crate) body: Vec<u8>,
    pub(crate) signature: Vec<u8>,
}

impl Signed {
    pub(crate) fn seal<T: Serialize>(value: &T, security: &Security) -> Vec<u8> {
        let body = postcard::to_allocvec(value).expect("envelopes always encode");
        let signature = security.sign(&body);
        postcard::to_allocvec(&Signed { body, signature }).expect("envelopes always encode")
    }

    /// Decodes and checks the signature; the body is decoded only once it is authenticated.
    pub(crate) fn open<T: for<'de> Deserialize<'de>>(
        bytes: &[u8],
        security: &Security,
    ) -> Result<T, String> {
        let signed: Signed =
            postcard::from_bytes(bytes).map_err(|err| format!("not a signed message: {err}"))?;
        security.check(&signed.body, &signed.signature)?;
        postcard::from_bytes(&signed.body)
            .map_err(|err| format!("a signed message that does not decode: {err}"))
    }
}

/// One job on the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct JobEnvelope {
    /// The submitting pool's id: its replies go to its reply list.
    pub(crate) client: String,
    /// The job's number within its client.
    pub(crate) id: u64,
    /// The SHA-256 of the client's executable.
    pub(crate) build: [u8; 32],
    /// The trampoline's and the function's offsets from the executable's anchor.
    pub(crate) call: [i64; 2],
    /// When the client made the job, in ms since the epoch by its clock.
    pub(crate) issued_ms: u64,
    /// After this (ms since the epoch) nobody waits for the result: do not start it.
    pub(crate) expires_ms: Option<u64>,
    /// Fail the task instead of running the job again when its worker died.
    pub(crate) at_most_once: bool,
    /// The postcard encoding of the argument.
    pub(crate) arg: Vec<u8>,
    /// Where the task was submitted, for the worker's log records (with the `tracing`
    /// feature; `None` without it).
    pub(crate) context: Option<JobContext>,
}

/// What a job carries from the span current at its submission into the worker process that
/// runs it: the same as a local process task carries.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct JobContext {
    /// The task's id, unique in the client application.
    pub(crate) task_id: u64,
    /// The name of the span current at submission; empty when there was none.
    pub(crate) span_name: String,
}

impl JobContext {
    /// The context of a remote task submitted now (see
    /// [`Carried::capture`](crate::process_pool::raw::Carried::capture)): `None` without the
    /// `tracing` feature.
    pub(crate) fn capture() -> Option<JobContext> {
        Carried::capture_for("remote")
            .get()
            .map(|context| JobContext {
                task_id: context.task_id,
                span_name: context.span_name.to_owned(),
            })
    }

    /// What the worker's process pool carries into the process that runs the job.
    pub(crate) fn carried(context: Option<&JobContext>) -> Carried {
        context.map_or_else(Carried::default, |context| {
            Carried::received(context.task_id, &context.span_name)
        })
    }
}

/// How a job ended, as a worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The call ran: its status byte and payload, exactly as the worker process replied (the
    /// encoded value, the caught panic, or a codec failure's message).
    Call { status: u8, payload: Vec<u8> },
    /// The worker process died; with its pid, and the signal or exit code when known.
    WorkerDied {
        pid: u32,
        signal: Option<i32>,
        code: Option<i32>,
    },
    /// The worker refused the job (another build, too old, ...).
    Refused(String),
    /// The job could not run for another reason.
    Failed(String),
    /// Not an end: the worker claimed the job and has held it for a while. Its reply follows.
    Started,
}

/// A worker's reply to one job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReplyEnvelope {
    pub(crate) id: u64,
    pub(crate) outcome: Outcome,
    /// `host:pid` of the worker that handled the job.
    pub(crate) worker: String,
}

/// A job whose signature, build and age were checked: its offsets name a function of this
/// executable. Made only by [`verify`].
#[derive(Debug)]
pub(crate) struct VerifiedJob {
    envelope: JobEnvelope,
}

impl VerifiedJob {
    pub(crate) fn offsets(&self) -> [i64; 2] {
        self.envelope.call
    }

    pub(crate) fn envelope(&self) -> &JobEnvelope {
        &self.envelope
    }

    pub(crate) fn into_envelope(self) -> JobEnvelope {
        self.envelope
    }
}

/// Why a job was not run.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// Not authenticated: nothing in it can be trusted, not even where to reply.
    Untrusted(String),
    /// Authenticated but not runnable here; the client should hear why.
    Answer(Box<JobEnvelope>, String),
}

/// Checks a job read from the queue: signature, then build, then age.
pub(crate) fn verify(
    bytes: &[u8],
    security: &Security,
    build: &[u8; 32],
    window_ms: u64,
    now_ms: u64,
) -> Result<VerifiedJob, Refusal> {
    let envelope: JobEnvelope = Signed::open(bytes, security).map_err(Refusal::Untrusted)?;
    if envelope.build != *build {
        let message = format!(
            "worker {} refused the job: it comes from another build of the program \
             (client build {}, worker build {}); run the same executable on clients and workers",
            identity::process_name(),
            identity::short_hex(&envelope.build),
            identity::short_hex(build),
        );
        return Err(Refusal::Answer(Box::new(envelope), message));
    }
    const SKEW_MS: u64 = 60_000;
    if envelope.issued_ms > now_ms + SKEW_MS || envelope.issued_ms + window_ms < now_ms {
        let message = format!(
            "worker {} refused the job: it was issued {} ms from now, outside the replay \
             window of {window_ms} ms (a replayed job, a clock out of step, or a queue \
             backlog longer than the window)",
            identity::process_name(),
            envelope.issued_ms as i64 - now_ms as i64,
        );
        return Err(Refusal::Answer(Box::new(envelope), message));
    }
    Ok(VerifiedJob { envelope })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> Security {
        Security::choose(Some(text.as_bytes().to_vec()), false).unwrap()
    }

    fn job(build: [u8; 32], issued_ms: u64) -> JobEnvelope {
        JobEnvelope {
            client: "c".into(),
            id: 7,
            build,
            call: [1, 2],
            issued_ms,
            expires_ms: None,
            at_most_once: false,
            arg: vec![42],
            context: Some(JobContext {
                task_id: 3,
                span_name: "request".into(),
            }),
        }
    }

    const NOW: u64 = 1_000_000_000;
    const WINDOW: u64 = 3_600_000;

    #[test]
    fn a_signed_job_of_this_build_verifies() {
        let security = key("fleet-key-0123456789");
        let bytes = Signed::seal(&job([1; 32], NOW), &security);
        let verified = verify(&bytes, &security, &[1; 32], WINDOW, NOW).unwrap();
        assert_eq!(verified.offsets(), [1, 2]);
        let context = verified.envelope().context.as_ref().unwrap();
        assert_eq!(
            (context.task_id, context.span_name.as_str()),
            (3, "request")
        );
        assert_eq!(verified.into_envelope().arg, [42]);
    }

    #[test]
    fn forged_unsigned_and_garbage_jobs_are_untrusted() {
        let security = key("fleet-key-0123456789");
        let forged = Signed::seal(&job([1; 32], NOW), &key("attacker-key-0123456"));
        let unsigned = Signed::seal(&job([1; 32], NOW), &Security::Trusted);
        for bytes in [forged, unsigned, b"garbage".to_vec()] {
            let refusal = verify(&bytes, &security, &[1; 32], WINDOW, NOW).unwrap_err();
            assert!(matches!(refusal, Refusal::Untrusted(_)), "{refusal:?}");
        }
    }

    #[test]
    fn a_job_of_another_build_or_too_old_is_answered() {
        let security = key("fleet-key-0123456789");
        let other = Signed::seal(&job([2; 32], NOW), &security);
        match verify(&other, &security, &[1; 32], WINDOW, NOW).unwrap_err() {
            Refusal::Answer(_, message) => assert!(message.contains("another build"), "{message}"),
            refusal => panic!("{refusal:?}"),
        }
        let old = Signed::seal(&job([1; 32], NOW - WINDOW - 1), &security);
        match verify(&old, &security, &[1; 32], WINDOW, NOW).unwrap_err() {
            Refusal::Answer(_, message) => assert!(message.contains("replay window"), "{message}"),
            refusal => panic!("{refusal:?}"),
        }
    }
}
