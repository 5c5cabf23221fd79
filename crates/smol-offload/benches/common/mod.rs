//! What the benchmarks share: the quick-mode switch, the median, and the machine's description.

/// Environment variable that selects the quick mode, like the `--quick` argument.
const QUICK_VARIABLE: &str = "SMOL_OFFLOAD_BENCH_QUICK";

/// True for a short smoke run: `-- --quick`, or `SMOL_OFFLOAD_BENCH_QUICK` set to anything but
/// empty or `0`. `cargo bench` passes `--bench` and maybe a filter: everything else is ignored.
pub(crate) fn quick_mode() -> bool {
    std::env::args().skip(1).any(|arg| arg == "--quick")
        || std::env::var_os(QUICK_VARIABLE).is_some_and(|value| !value.is_empty() && value != "0")
}

/// The median of `values` (the mean of the middle two for an even count).
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// "N CPUs, <model>; <rustc version>", for the report.
pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpus} CPUs, {}; {}", cpu_model(), rustc_version())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    std::process::Command::new(rustc)
        .arg("-V")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|version| version.trim().to_owned())
        .filter(|version| !version.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
