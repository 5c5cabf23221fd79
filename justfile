# The usual steps, each one or two commands you can also type. `just ci` runs .ci/run, which
# is exactly what CI runs.

# Run the thread demo: blocks(n) on three threads.
demo:
    cargo run --release --bin blocks-thread

# The whole test suite: unit, integration, end-to-end and doc tests.
test:
    cargo test --workspace

# Debug mode's reports as tracing events, with the optional feature on.
test-tracing:
    cargo clippy -p smol-offload --all-targets --features tracing
    cargo test -p smol-offload --features tracing --test debug_tracing
    cargo test -p smol-offload-remote --features tracing --test remote_tracing

# The pools' metrics, with the optional feature on.
test-metrics:
    cargo clippy -p smol-offload --all-targets --features metrics
    cargo test -p smol-offload --features metrics --test metrics
    cargo clippy -p smol-offload-remote --all-targets --features metrics
    cargo test -p smol-offload-remote --features metrics --test remote_metrics

# Formatting and clippy, warnings as errors.
lint:
    cargo fmt --all --check
    RUSTFLAGS="-D warnings" cargo clippy --workspace --all-targets

# The API docs, warnings as errors.
doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Each crate's public API against its checked-in public-api.txt (`--write` to update it).
public-api:
    python3 scripts/public-api.py --check smol-offload
    python3 scripts/public-api.py --check smol-offload-remote

# Every example; each checks its own result and fails when wrong.
examples:
    for example in examples/*.rs; do cargo run --release -p smol-offload --features metrics --example "$(basename "$example" .rs)" >/dev/null || exit 1; done
    for example in crates/smol-offload-remote/examples/*.rs; do cargo run --release -p smol-offload-remote --example "$(basename "$example" .rs)" >/dev/null || exit 1; done

# Benchmarks against the incumbents, printed side by side with ratios.
bench:
    cargo bench -p smol-offload
    cargo bench -p smol-offload-remote

# What CI runs: lint, doc, public API, test, examples, and no process left behind.
ci:
    bash .ci/run
