//! Smoke test of the engine harness (tiny counts, runs in `cargo test --workspace`): both
//! aggregations process exactly the events the generator made.

use squall_benches::engine::{Aggregation, EngineRun, run};

fn tiny(workers: usize, aggregation: Aggregation) -> EngineRun {
    EngineRun { users: 2_000, tracks: 1_000, batch: 500, aggregation, ..EngineRun::new(workers, 6_000) }
}

#[test]
fn the_engine_processes_every_generated_event() {
    for workers in [1, 2] {
        let r = run(&tiny(workers, Aggregation::Timely));
        assert_eq!(r.generated, 6_000);
        assert_eq!(r.processed, r.generated as u64, "workers={workers}");
        assert!(r.applied > 5_000 && r.applied < 6_000, "resends dropped: {}", r.applied);
        assert!(r.users > 100, "{}", r.users);
        assert_eq!(r.misses, 0, "the cache was warmed");
    }
}

#[test]
fn the_differential_aggregation_processes_every_generated_event() {
    let r = run(&tiny(2, Aggregation::Differential));
    assert_eq!(r.processed, r.generated as u64);
}
