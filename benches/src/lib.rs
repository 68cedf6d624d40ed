//! Criterion benches of the gatehouse core live in `benches/`; run them with
//! `make bench` (or `cargo bench -p gatehouse-benches`). Each group carries a baseline
//! measured in the same run, so figures are read as ratios on a noisy machine.
