//! The engine's hot path (push, ring, poll) against the software controller in null
//! mode, inline: the benchmark thread also runs the controller, so there is no
//! cross-thread wait in the number. `hot_path` times engine and controller together;
//! `engine_only` times only the engine's calls. Reported per I/O: divide the time per
//! iteration by the batch. `cargo xtask bench` prints ns/IO and callgrind
//! instructions/IO.

// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use homi::Command;
use homi_instruments::{SoftConfig, SoftController};

fn hot_path(c: &mut Criterion) {
    let ctrl = SoftController::new_inline(SoftConfig { null: true, ..SoftConfig::default() });
    let mut qp = ctrl.create_qpair(1024).expect("queue pair");
    let buf = ctrl.alloc(4096);
    let cmd = Command::read(1, 0, 8).with_prps(buf.dma_addr(), 0);
    let mut g = c.benchmark_group("hot_path");
    for batch in [1u64, 32, 128] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("batch{batch}"), |b| {
            b.iter(|| {
                for i in 0..batch {
                    // SAFETY: `buf` outlives every command; null mode never touches it.
                    unsafe { qp.push(black_box(&cmd), i) }.expect("push");
                }
                qp.ring();
                ctrl.serve();
                let mut n = 0;
                while n < batch as usize {
                    n += qp.poll(|c| _ = black_box(c)).expect("poll");
                }
            })
        });
    }
    g.finish();

    // The engine alone: the clock runs only around push/ring and poll, never around
    // the controller's `serve`. Two clock reads per batch are included.
    let mut g = c.benchmark_group("engine_only");
    for batch in [32u64, 128] {
        g.throughput(Throughput::Elements(batch));
        g.bench_function(format!("batch{batch}"), |b| {
            b.iter_custom(|iters| {
                let mut engine = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let t0 = std::time::Instant::now();
                    for i in 0..batch {
                        // SAFETY: as above.
                        unsafe { qp.push(black_box(&cmd), i) }.expect("push");
                    }
                    qp.ring();
                    engine += t0.elapsed();
                    ctrl.serve();
                    let t1 = std::time::Instant::now();
                    let mut n = 0;
                    while n < batch as usize {
                        n += qp.poll(|c| _ = black_box(c)).expect("poll");
                    }
                    engine += t1.elapsed();
                }
                engine
            })
        });
    }
    g.finish();
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
