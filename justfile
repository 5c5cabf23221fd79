# Thin recipes named after the CI steps; .ci/run runs the same commands.

# Run the thread demo of seed 001.
demo:
    cargo run --release --bin blocks-thread

# The whole test suite: unit, integration, end-to-end and doc tests.
test:
    cargo test --workspace

# Debug mode's reports as tracing events, with the optional feature on.
test-tracing:
    cargo clippy -p smol-offload --all-targets --features tracing
    cargo test -p smol-offload --features tracing --test debug_tracing

# Benchmarks against the incumbents, printed side by side with ratios.
bench:
    cargo bench -p smol-offload

lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets

doc:
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

ci: lint doc test test-tracing
