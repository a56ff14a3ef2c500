//! Who listens on a TCP port: the listening sockets on it (`/proc/net/tcp` and `tcp6`, state
//! `0A`) and whether one of them is among a process's descriptors (`/proc/<pid>/fd`).
//!
//! `/readyz` asks it once per public listener before its first 200: weir checks each address
//! before Pingora binds it, and Pingora retries a busy port for 30 s, so another process that
//! takes the port in between would otherwise answer `/readyz`'s test connection and make weir
//! look ready (README "Operations"). The integration tests' harness asks it for the same race
//! among tests.
//!
//! Cold path: it reads `/proc` (one `readlink` per open descriptor), so `/readyz` stops asking
//! once a listener is confirmed; Pingora keeps its listening sockets until shutdown.

use std::net::SocketAddr;

/// Who holds the listening sockets on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// One of the listening sockets on the port is the process's own.
    Process,
    /// Sockets listen on the port, none of them the process's.
    Other,
    /// No socket listens on the port.
    Nobody,
    /// `/proc/net/tcp` cannot be read (not Linux, or no procfs): nobody can tell.
    Unknown,
}

/// Who listens on `address`'s port (any local address), as seen from process `pid`.
pub fn listener_owner(pid: u32, address: SocketAddr) -> Owner {
    let port = format!(":{:04X}", address.port());
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        readable = true;
        // "sl local_address rem_address st tx_queue:rx_queue tr:when retrnsmt uid timeout inode"
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().take(10).collect();
            if let [_, local, _, "0A", _, _, _, _, _, inode] = f[..] {
                if local.ends_with(&port) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if !readable {
        return Owner::Unknown;
    }
    if inodes.is_empty() {
        return Owner::Nobody;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return Owner::Unknown };
    let ours = fds
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .any(|link| inodes.iter().any(|i| link.as_os_str() == i.as_str()));
    if ours {
        Owner::Process
    } else {
        Owner::Other
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::os::fd::AsFd;
    use std::process::{Child, Command, Stdio};

    /// A listening socket on a loopback port that only a child process (`sleep`) holds: bound
    /// here, its descriptor inherited by the child (a dup without close-on-exec), then closed
    /// here. Kill the child by its PID when done.
    pub(crate) fn port_held_by_another_process() -> (SocketAddr, Child) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let inheritable = rustix::io::dup(listener.as_fd()).unwrap();
        let child = Command::new("sleep").arg("60").stdin(Stdio::null()).spawn().unwrap();
        drop((inheritable, listener));
        (address, child)
    }

    #[test]
    fn tells_its_own_listener_from_another_process_s_and_from_none() {
        let pid = std::process::id();
        let own = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(listener_owner(pid, own.local_addr().unwrap()), Owner::Process);

        let (address, mut child) = port_held_by_another_process();
        assert_eq!(listener_owner(pid, address), Owner::Other, "{address} is the child's");
        assert_eq!(listener_owner(child.id(), address), Owner::Process);
        child.kill().unwrap();
        child.wait().unwrap();

        let released = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(listener_owner(pid, released), Owner::Nobody, "{released} was released");
    }
}
