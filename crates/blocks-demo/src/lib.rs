//! The blocks(n) demo of seed 001 on smol-offload's thread and process pools.
