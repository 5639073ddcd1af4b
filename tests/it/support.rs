//! Starting and stopping in-process workers with a deadline on every wait.

use std::time::Duration;

use psw_tasks::{Client, Worker, WorkerStats};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A worker running in this process until stopped.
pub(crate) struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<psw_tasks::Result<()>>,
    pub(crate) stats: WorkerStats,
}

impl RunningWorker {
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("worker stops within 30 s")
            .expect("worker task did not panic")
            .expect("worker ran without error");
    }
}

pub(crate) fn start_worker(client: &Client, concurrency: usize) -> RunningWorker {
    start_built(
        Worker::builder(client)
            .concurrency(concurrency)
            .shutdown_grace(Duration::from_secs(10))
            .build()
            .expect("build worker"),
    )
}

/// Run a worker built by the test.
pub(crate) fn start_built(worker: Worker) -> RunningWorker {
    let stats = worker.stats();
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(worker.run_until(async {
        let _ = stopped.await;
    }));
    RunningWorker {
        stop: Some(stop),
        task,
        stats,
    }
}

pub(crate) use psw_tasks::testing::eventually;

/// (entries in the queue's stream, entries pending in its group), read with plain commands.
pub(crate) fn queue_state(ns: &psw_tasks::testing::TestNamespace, queue: &str) -> (u64, u64) {
    let mut conn = ns.connection();
    let stream = ns.stream_key(queue);
    let len: u64 = redis::cmd("XLEN").arg(&stream).query(&mut *conn).unwrap();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&stream)
        .arg("workers")
        .query(&mut *conn)
        .unwrap();
    let pending = match pending {
        redis::Value::Array(parts) => match parts.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    (len, pending)
}

/// A redis-server of a test's own, on a free port, stopped on drop: for tests that change the
/// server (passwords, TLS) or cut its connections, which must not disturb the shared one.
pub(crate) struct PrivateRedis {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl PrivateRedis {
    /// Start one with extra arguments; `tls` says that the port speaks TLS only.
    pub(crate) fn start(extra: &[&str], tls: bool) -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port, extra, tls)
    }

    /// Kill it with SIGKILL, as a crash would.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start one on a given port (to bring a killed one back).
    pub(crate) fn start_on(port: u16, extra: &[&str], tls: bool) -> PrivateRedis {
        let port_arg = port.to_string();
        let mut args = vec!["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        if tls {
            args.extend(["--port", "0", "--tls-port", &port_arg]);
        } else {
            args.extend(["--port", &port_arg]);
        }
        args.extend(extra);
        let child = std::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Add a raw entry with these fields to the `default` queue's stream, as a producer in another
/// language (or a broken one) would.
pub(crate) fn xadd(ns: &psw_tasks::testing::TestNamespace, fields: &[(&str, Vec<u8>)]) {
    let client = redis::Client::open(ns.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut cmd = redis::cmd("XADD");
    cmd.arg(ns.stream_key("default")).arg("*");
    for (name, value) in fields {
        cmd.arg(*name).arg(value.as_slice());
    }
    let _: String = cmd.query(&mut conn).unwrap();
}

/// A TCP proxy in front of a Redis that, once armed, loses the reply to the first command whose
/// request holds a given text: it passes the request on, lets Redis run it, and then drops the
/// connection instead of the reply, as a timeout or a cut network does.
pub(crate) struct LosingProxy {
    pub(crate) port: u16,
    lost: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LosingProxy {
    /// A proxy to `upstream` (`host:port`) that loses the reply to the first request holding
    /// `marker`.
    pub(crate) async fn start(upstream: String, marker: &'static [u8]) -> LosingProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let lost = Arc::new(AtomicBool::new(false));
        let armed = lost.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let armed = armed.clone();
                tokio::spawn(async move {
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let dropping = Arc::new(AtomicBool::new(false));
                    let seen = dropping.clone();
                    let up = tokio::spawn(async move {
                        let mut buffer = vec![0; 64 * 1024];
                        while let Ok(n) = client_read.read(&mut buffer).await {
                            if n == 0 {
                                break;
                            }
                            let request = &buffer[..n];
                            if !armed.load(Ordering::SeqCst)
                                && request.windows(marker.len()).any(|w| w == marker)
                            {
                                armed.store(true, Ordering::SeqCst);
                                seen.store(true, Ordering::SeqCst);
                            }
                            if server_write.write_all(request).await.is_err() {
                                break;
                            }
                        }
                    });
                    let mut buffer = vec![0; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        if dropping.load(Ordering::SeqCst) {
                            // Redis has the request and answers: let it finish, then cut.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    up.abort();
                });
            }
        });
        LosingProxy { port, lost, task }
    }

    /// Whether it has lost its reply.
    pub(crate) fn has_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for LosingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
