//! Finding and running the store servers the tests use (installed by
//! scripts/deps/*.sh into `.tools`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Finds `name` on PATH or in the project's tool venv. Missing: `None` (the
/// test skips), unless `SESAME_REQUIRE_TOOLS=1` (the test script) makes it a
/// failure that names the install script.
pub fn find_tool(name: &str, install_script: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    dirs.push(root.join(".tools/bin"));
    dirs.push(root.join(".tools/venv/bin"));
    if let Some(found) = dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Some(found);
    }
    if std::env::var("SESAME_REQUIRE_TOOLS").as_deref() == Ok("1") {
        panic!("`{name}` is not installed; run {install_script} (or scripts/test.sh)");
    }
    eprintln!("skipping: `{name}` not found (install it with {install_script})");
    None
}

/// A free loopback port (a race with other processes is possible but rare).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process that is killed when dropped, so a failing test leaves no server behind.
pub struct Server {
    child: Option<Child>,
}

impl Server {
    /// Starts `command` with its output discarded.
    pub fn spawn(mut command: Command) -> Self {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child: Some(child) }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `url` answers with a success status, at most 30 seconds.
pub async fn wait_healthy(url: &str) {
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if matches!(http.get(url).send().await, Ok(r) if r.status().is_success()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{url} did not become healthy"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
