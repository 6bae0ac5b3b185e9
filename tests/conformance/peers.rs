//! nginx and HAProxy as real processes, each with a minimal generated config in a temp dir:
//! one worker, foreground, an HTTP/1.1 listener on a free loopback port, keep-alive
//! connections to the one backend. Missing programs fail the test (CI installs both).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use super::common::{free_port, wait_for_port};

/// A peer proxy process, killed on drop.
pub struct Peer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of `program` on PATH or in the sbin directories Debian puts these daemons in.
fn find(program: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the conformance suite compares ALB with {program}, and {program} is not \
                 installed: apt-get install {program} (scripts/test --deps installs it)"
            )
        })
}

fn spawn(program: &Path, args: &[&str], dir: tempfile::TempDir, port: u16) -> Peer {
    let log = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    wait_for_port(port);
    Peer {
        port,
        child,
        _dir: dir,
    }
}

/// A temp dir every user may write (nginx's workers drop to `nobody` when run as root).
fn open_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// nginx with `proxy_http_version 1.1` and a keep-alive upstream; `Host` passed through as
/// ALB does, and a client that half-closes still gets its answer.
pub fn nginx(backend_port: u16) -> Peer {
    let program = find("nginx");
    let dir = open_dir();
    let port = free_port();
    let root = dir.path().display().to_string();
    let config = format!(
        r#"worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream backend {{
        server 127.0.0.1:{backend_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_ignore_client_abort on;
            # an answer nginx cannot read ends in a 504 soon, not after a minute
            proxy_read_timeout 2s;
        }}
    }}
}}
"#
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let path = path.display().to_string();
    spawn(
        &program,
        &[
            "-p",
            &root,
            "-e",
            &format!("{root}/error.log"),
            "-c",
            &path,
            "-g",
            "daemon off;",
        ],
        dir,
        port,
    )
}

/// HAProxy in `mode http` with its default keep-alive and connection reuse.
pub fn haproxy(backend_port: u16) -> Peer {
    let program = find("haproxy");
    let dir = open_dir();
    let port = free_port();
    let config = format!(
        r#"global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
frontend front
    bind 127.0.0.1:{port}
    default_backend back
backend back
    server one 127.0.0.1:{backend_port}
"#
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap();
    let path = path.display().to_string();
    spawn(&program, &["-f", &path, "-db"], dir, port)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_peer_fails_the_suite_with_a_clear_message() {
        let panic = std::panic::catch_unwind(|| super::find("no-such-proxy-here")).unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("apt-get install no-such-proxy-here"),
            "{message}"
        );
    }
}
