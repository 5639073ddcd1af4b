//! Connections as operators configure them: passwords, TLS with a private CA, and servers
//! that drop every client.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use psw_tasks::{Client, Config};
use psw_tasks_tests::add;

use crate::support::{PrivateRedis, start_worker};

const WAIT: Duration = Duration::from_secs(15);

async fn one_job_runs(client: &Client) {
    let worker = start_worker(client, 2);
    let handle = add::enqueue(client, 20, 22).await.unwrap();
    assert_eq!(handle.wait(WAIT).await.unwrap(), 42);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_urls_authenticate() {
    let redis = PrivateRedis::start(&["--requirepass", "s3cret"], false);
    let url = format!("redis://:s3cret@127.0.0.1:{}", redis.port);
    let client = Client::connect(&Config::redis(url)).await.unwrap();
    one_job_runs(&client).await;

    let wrong = format!("redis://:wrong@127.0.0.1:{}", redis.port);
    let err = Client::connect(&Config::redis(wrong)).await.unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(
        chain.to_lowercase().contains("authentication failed"),
        "{chain}"
    );
    assert!(
        !chain.contains("wrong"),
        "the password is not repeated: {chain}"
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl (apt-get install openssl)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A CA and a server certificate for localhost / 127.0.0.1 signed by it.
fn make_certificates(dir: &Path) {
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=psw-tasks test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_urls_verify_the_server_with_the_configured_ca() {
    let dir =
        std::env::temp_dir().join(format!("psw-tls-{:016x}", std::process::id() as u64 * 7919));
    std::fs::create_dir_all(&dir).unwrap();
    make_certificates(&dir);
    let file = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (cert, key, ca) = (file("server.pem"), file("server.key"), file("ca.pem"));
    let redis = PrivateRedis::start(
        &[
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
        true,
    );
    let url = format!("rediss://localhost:{}", redis.port);

    let mut config = Config::redis(url.clone());
    config.redis_ca_cert = Some(dir.join("ca.pem"));
    let client = Client::connect(&config).await.unwrap();
    one_job_runs(&client).await;

    // Without the CA, the self-made certificate is not trusted.
    assert!(Client::connect(&Config::redis(url)).await.is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_and_clients_reconnect_after_the_server_drops_them() {
    let redis = PrivateRedis::start(&[], false);
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let client = Client::connect(&Config::redis(url.clone())).await.unwrap();
    let worker = start_worker(&client, 2);
    assert_eq!(
        add::enqueue(&client, 1, 1)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap(),
        2
    );

    let admin = redis::Client::open(url.as_str()).unwrap();
    let mut admin = admin.get_connection().unwrap();
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query(&mut admin)
        .unwrap();
    assert!(
        killed >= 2,
        "the worker's and the client's connections were cut ({killed})"
    );

    // The first command on a cut connection may fail; the next reconnects. A producer retries.
    let mut handle = None;
    for _ in 0..3 {
        if let Ok(h) = add::enqueue(&client, 2, 2).await {
            handle = Some(h);
            break;
        }
    }
    let handle = handle.expect("enqueue works again after a reconnect");
    let mut result = None;
    for _ in 0..3 {
        if let Ok(sum) = handle.wait(WAIT).await {
            result = Some(sum);
            break;
        }
    }
    assert_eq!(
        result,
        Some(4),
        "the worker fetched and ran the job after reconnecting"
    );
    worker.stop().await;
}
