//! The fleet's key fingerprint on the broker: the first pool or worker of a queue records it,
//! and a later one whose key does not match refuses to start, before it takes or sends a job.

use crate::broker::Broker;
use crate::keys::Keys;
use crate::security::Security;

/// Records this side's key fingerprint for the queue if none is, else checks that it is the
/// one recorded. The error names both fingerprints, never a key.
pub(crate) fn join_fleet(
    connection: &mut redis::Connection,
    broker: &Broker,
    keys: &Keys,
    security: &Security,
) -> Result<(), String> {
    let ours = security.fingerprint();
    let recorded: Option<String> = redis::cmd("SET")
        .arg(keys.fingerprint())
        .arg(&ours)
        .arg("NX")
        .arg("GET")
        .query(connection)
        .map_err(|err| broker.unreachable(&err))?;
    match recorded {
        Some(fleet) if fleet != ours => Err(mismatch(keys, &fleet, &ours)),
        _ => Ok(()),
    }
}

fn mismatch(keys: &Keys, fleet: &str, ours: &str) -> String {
    let what = match (fleet == "unsigned", ours == "unsigned") {
        (true, _) => "this side signs its jobs, but the fleet is unsigned (trusted_network)",
        (_, true) => "this side is unsigned (trusted_network), but the fleet signs its jobs",
        _ => "the signing key differs from the fleet's",
    };
    format!(
        "{what}: the broker records the fleet's key fingerprint {fleet} at {key}, and this side's \
         is {ours}; use the fleet's key (SMOL_OFFLOAD_REMOTE_KEY or .key(..)), or, to change the \
         fleet's key, stop its pools and workers and delete {key}",
        key = keys.fingerprint()
    )
}
