//! Zero-downtime binary upgrade (issue 12): a second weir started with `--upgrade` takes the
//! listening sockets over when the old one gets SIGQUIT. New connections are accepted all
//! through the handover; the old process's WebSockets keep echoing until its drain closes them
//! with 1001; every connection of both processes gets its stop record (the new process writes
//! the spool's other slot and delivers what the old one left).

use crate::support::backends::echo_backend;
use crate::support::{connect, http_get, signal, Weir, DEADLINE};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The new process, killed on drop.
struct Upgraded(Child);

impl Drop for Upgraded {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

// Multi-threaded: waiting for the old process's exit blocks a thread, and the test's echo
// backend and prober must go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn an_upgrade_keeps_accepting_and_lets_old_connections_drain() {
    let backend = echo_backend().await;
    let routes = format!(
        "pools:\n  - name: p\n    backends: [\"{}\"]\n    health_check: {{kind: none}}\nroutes:\n  - {{name: ws, path_prefix: /ws, pool: p}}\n",
        backend.addr
    );
    let extra = "server:\n  threads: 2\n  grace_period: 4s\ndrain:\n  window: 500ms\n";
    let mut old = Weir::start_with_admin(&routes, extra, "  final_scrape: 0s\n").await;
    let mut before = Vec::new();
    for i in 0..5 {
        let mut ws = connect(&old, "/ws").await;
        ws.send(Message::text(format!("before {i}"))).await.unwrap();
        assert_eq!(crate::support::recv(&mut ws).await, Message::text(format!("before {i}")));
        before.push(ws);
    }
    // The new process waits on the upgrade socket for the old one's listeners.
    let log = std::fs::File::create(old.dir.path().join("new.log")).unwrap();
    let new = Upgraded(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "--upgrade", "--config"])
            .arg(&old.config)
            .current_dir(old.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let sock = old.dir.path().join("weir-data").join("upgrade.sock");
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < DEADLINE, "the new process never listened on {}", sock.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Clients keep connecting through the whole handover: every one must get its 101 and echo.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let prober = {
        let (stop, ok, failed, addr) = (stop.clone(), ok.clone(), failed.clone(), old.addr);
        tokio::spawn(async move {
            // Bounded: at most 2000 attempts or one minute.
            let began = Instant::now();
            for i in 0..2000 {
                if stop.load(Ordering::Relaxed) || began.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let attempt = async {
                    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.ok()?;
                    ws.send(Message::text(format!("during {i}"))).await.ok()?;
                    let echoed = ws.next().await?.ok()?;
                    let _ = ws.close(None).await;
                    while let Some(Ok(_)) = ws.next().await {}
                    (echoed == Message::text(format!("during {i}"))).then_some(())
                };
                match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                    Ok(Some(())) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    signal(old.pid(), "QUIT");
    // Old connections still echo after the handover began.
    for (i, ws) in before.iter_mut().enumerate() {
        ws.send(Message::text(format!("after {i}"))).await.unwrap();
        assert_eq!(crate::support::recv(ws).await, Message::text(format!("after {i}")));
    }
    // ... until the old process drains them with 1001.
    for ws in before.iter_mut() {
        let end = crate::support::drain_until_end(ws, Duration::from_secs(30)).await;
        let code = end.iter().find_map(|m| match m {
            Message::Close(Some(f)) => Some(u16::from(f.code)),
            _ => None,
        });
        assert_eq!(code, Some(1001), "{end:?}");
    }
    let status = old.exited_within(Duration::from_secs(40)).expect("the old process exits after its drain");
    assert!(status.success(), "{status:?}\n{}", old.log());
    // A little more traffic on the new process alone, then stop probing.
    let after_exit = ok.load(Ordering::Relaxed);
    let until = Instant::now() + DEADLINE;
    while ok.load(Ordering::Relaxed) < after_exit + 5 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    prober.await.unwrap();
    let new_log = || std::fs::read_to_string(old.dir.path().join("new.log")).unwrap_or_default();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} connections failed during the upgrade ({ok} ok)\nnew:\n{}", new_log());
    assert!(ok >= after_exit + 5 && ok >= 20, "{ok} connections during the upgrade");
    // The new process took the admin address over once the old one let it go.
    crate::support::eventually("the new process's /readyz", || async {
        matches!(http_get(old.admin, "/readyz").await, Ok((200, _, _))).then_some(())
    })
    .await;
    assert!(new_log().contains("handover"), "the new process wrote the other spool slot\n{}", new_log());
    // Every connection of both processes has its stop record, once.
    let records = crate::support::eventually("a stop record for every connection", || async {
        let r = old.records();
        let ids: HashSet<_> = r.iter().map(|r| r.identity.connection_id).collect();
        (ids.len() == 5 + ok).then_some(r)
    })
    .await;
    let drained = records
        .iter()
        .filter(|r| r.close.as_ref().is_some_and(|c| c.cause == "drained" || c.cause == "shutdown"))
        .count();
    assert!(drained >= 5, "the old connections ended by the old process's drain: {drained}");
    drop(new);
}
