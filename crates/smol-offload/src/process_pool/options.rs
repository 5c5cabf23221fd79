//! [`PoolOptions`]: what a [`ProcessPoolBuilder`](super::ProcessPoolBuilder) chose besides the
//! number of workers, shared by the submit path and the dispatcher.

/// The settings of one process pool.
#[derive(Debug, Default)]
pub(crate) struct PoolOptions {
    /// The pool's label in metrics and debug mode's reports.
    pub(crate) name: Option<String>,
    /// Dropping a started task kills its worker.
    pub(crate) kill_on_drop: bool,
    /// The longest a task may run before the dispatcher kills its worker.
    pub(crate) task_timeout: Option<std::time::Duration>,
    /// How many tasks a worker runs before it is replaced.
    pub(crate) max_tasks_per_worker: Option<usize>,
    /// What every new worker runs before its first task.
    pub(crate) initializer: Option<Initializer>,
    /// How many jobs may wait in the queue; `None`: no limit.
    pub(crate) queue_limit: Option<usize>,
    /// Workers print the panics of the initializer as they happen, as they print those of
    /// tasks (which carry the option in each request).
    pub(crate) print_panics: bool,
}

/// A function and its encoded argument, run once in every new worker before its first task.
#[derive(Debug)]
pub(crate) struct Initializer {
    pub(crate) call: crate::sys::ErasedCall,
    pub(crate) arg: Vec<u8>,
}
