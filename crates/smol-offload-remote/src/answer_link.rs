//! [`AnswerLink`]: a worker's connection for answers, which sends a batch of answers without
//! waiting for the broker to acknowledge it.
//!
//! Waiting for the acknowledgement of each batch cost the answering thread one more sleep and
//! wake-up per batch, and delayed the next batch by a round trip. Nothing waits on it: a
//! batch's effects are the client's reply and the entries' acknowledgement, which the broker
//! applies in order as it reads them. The acknowledgements are read before the connection's
//! next use (by then they have arrived, or are about to), so that a command sent later reads
//! its own reply. An error the broker answered with is logged then; a connection that broke
//! after a batch was sent leaves that batch's entries pending, and they are taken over after
//! the visibility timeout, as for a worker that died (at least once).

use redis::Value;

use crate::broker::Broker;

/// The answering thread's connection, and the replies the broker still owes on it.
#[derive(Default)]
pub(crate) struct AnswerLink {
    open: Option<redis::Connection>,
    /// Replies to commands sent and not read yet.
    unread: usize,
}

impl AnswerLink {
    /// The connection, ready for a command whose reply is read at once: connects if needed,
    /// and first reads the replies owed for earlier batches. `log` gets the errors among them.
    ///
    /// # Errors
    ///
    /// The broker could not be reached, or the connection broke.
    pub(crate) fn ready(
        &mut self,
        broker: &Broker,
        log: &dyn Fn(&str),
    ) -> Result<&mut redis::Connection, String> {
        if self.open.is_none() {
            self.open = Some(broker.connect()?);
            self.unread = 0;
        }
        let open = self.open.as_mut().expect("connected just now");
        while self.unread > 0 {
            self.unread -= 1;
            match open.recv_response() {
                Ok(Value::ServerError(err)) => {
                    log(&format!("the broker refused part of an answer: {err:?}"));
                }
                Ok(_) => {}
                Err(err)
                    if err.is_io_error()
                        || err.is_connection_dropped()
                        || err.is_unrecoverable_error() =>
                {
                    self.lose();
                    return Err(format!(
                        "lost the broker after sending answers; their jobs will be taken over \
                         after the visibility timeout: {err}"
                    ));
                }
                Err(err) => log(&format!("the broker refused part of an answer: {err}")),
            }
        }
        Ok(self.open.as_mut().expect("still open"))
    }

    /// Sends `pipe` without waiting for its replies, which are read before the connection's
    /// next use.
    ///
    /// # Errors
    ///
    /// The broker could not be reached, or the connection broke; nothing of `pipe` was then
    /// sent, or not all of it.
    pub(crate) fn send(
        &mut self,
        broker: &Broker,
        pipe: &redis::Pipeline,
        log: &dyn Fn(&str),
    ) -> Result<(), String> {
        let open = self.ready(broker, log)?;
        match open.send_packed_command(&pipe.get_packed_pipeline()) {
            Ok(()) => {
                self.unread += pipe.len();
                Ok(())
            }
            Err(err) => {
                self.lose();
                Err(err.to_string())
            }
        }
    }

    /// Forgets a broken connection; the next use connects again.
    pub(crate) fn lose(&mut self) {
        self.open = None;
        self.unread = 0;
    }
}
