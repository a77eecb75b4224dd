//! The smoke check `cargo test` runs instead of the benchmark: a few round trips in
//! each mode and transport and a few Allocate + Refresh pairs through turnd (and the
//! forwarder), to keep the bench's machinery working. Timings are printed, never judged.

use crate::control::Meter;
use crate::procs::{Kind, Setup};
use crate::relay::{self, Mode, Spec};
use crate::sessions::{self, Prepare};
use crate::streams::{self, Transport};
use crate::{parse, udp, Bench};
use std::time::{Duration, Instant};

/// Under `cargo test`: a few round trips through turnd and the forwarder, to keep the
/// bench's machinery working. Timings are printed, never judged.
pub fn smoke() {
    let options = parse(&[
        "--bench".into(),
        "--quick".into(),
        "--duration".into(),
        "0.3".into(),
        "--warmup".into(),
        "0.1".into(),
    ])
    .expect("smoke options");
    let mut bench = Bench::new(options).expect("bench setup");
    let peer = udp::local_v4(&bench.peer).expect("peer");
    // One worker, as the main comparison runs it; then two in channel mode, as the scale
    // section runs it: 16 allocations all hash to one worker once in 2^15 runs.
    let turnd = Kind::Turnd { workers: 1 };
    let allocations = 16;
    let cells = [
        (Mode::Channel, turnd.clone()),
        (Mode::Channel, Kind::Forwarder),
        (Mode::Send, turnd.clone()),
        (Mode::Send, Kind::Forwarder),
        (Mode::Channel, Kind::Turnd { workers: 2 }),
    ];
    for (mode, kind) in cells {
        let server = bench.start(&kind, mode.header()).expect("server starts");
        if kind != Kind::Forwarder {
            let prepare = if mode == Mode::Channel { Prepare::Channel } else { Prepare::Permission };
            let (convs, _) =
                sessions::allocate(&bench.clients(), server.addr, allocations, prepare, peer, Duration::from_secs(10));
            assert!(convs.iter().all(|c| c.relay.is_some() && c.error.is_none()), "allocations on {}", server.label);
        }
        let spec = Spec {
            mode,
            allocations,
            payload: 100,
            window: 2,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
        };
        let outcome = relay::run(&bench.clients(), &bench.peer, server.addr, server.pid, &spec);
        assert!(outcome.window.units > 0, "{} relayed nothing in {} mode", server.label, mode.label());
        println!("smoke: {} {} mode: {} round trips", server.label, mode.label(), outcome.window.units);
    }
    // One TCP and one TLS cell, briefly: the stream generator and the servers' listeners.
    let (ca, cert, key) = bench.tls_files();
    let config = streams::tls_config(&ca).expect("TLS client configuration");
    let setup = Setup { tls: Some((cert, key)), ..bench.setup.clone() };
    let server = bench.start_in(&setup, &turnd, 0).expect("turnd starts with TCP and TLS");
    let (tcp, tls) = server.streams.expect("stream listeners");
    for (transport, addr, config) in [(Transport::Tcp, tcp, None), (Transport::Tls, tls, Some(&config))] {
        let mut conns = streams::connect(addr, 4, config, peer).expect("stream allocations");
        let spec = Spec {
            mode: Mode::Channel,
            allocations: 4,
            payload: 100,
            window: 2,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
        };
        let outcome = streams::run(&mut conns, &bench.peer, server.pid, &spec).expect("stream relay");
        assert!(outcome.window.units > 0, "turnd relayed nothing over {}", transport.label());
        println!("smoke: turnd channel over {}: {} round trips", transport.label(), outcome.window.units);
    }
    drop(server);
    let server = bench.start(&turnd, 0).expect("turnd starts");
    let mut meter = Meter::new(server.pid, Duration::ZERO, Duration::from_millis(200));
    let until = Instant::now() + Duration::from_millis(250);
    let churn = sessions::churn(&bench.clients(), server.addr, 4, &bench.churn_pool, &mut meter, until);
    assert!(meter.count > 0 && churn.errors == 0, "Allocate + Refresh(0) pairs on turnd");
    println!("smoke: turnd churn: {} pairs", meter.count);
    let _ = std::fs::remove_dir_all(&bench.setup.dir);
    bench.json.clear();
}
