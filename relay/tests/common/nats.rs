//! A real nats-server (Debian's `nats-server`, which scripts/setup.sh installs) on a free loopback
//! port, with a user and password or an nkey; stopped when dropped. Relays joined to it with
//! [`NatsServer::config`].

use super::{Fixture, free_port};
use campfire_relay::Config;
use campfire_relay::config::PeerBus;
use campfire_testkit::ws::WAIT;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const USER: &str = "campfire";
pub const PASSWORD: &str = "nats-itest-password";

/// How clients authenticate to the server.
pub enum Auth {
    Password,
    /// The one user is an nkey: its seed in this file.
    Nkey(PathBuf),
}

pub struct NatsServer {
    pub port: u16,
    auth: Auth,
    /// Beyond the address and port: credentials, and any of the caller's (TLS, say).
    options: Vec<String>,
    child: Option<Child>,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with(Auth::Password, &[]).await
    }

    pub async fn start_with(auth: Auth, options: &[&str]) -> NatsServer {
        let port = free_port();
        let mut args: Vec<String> = match &auth {
            Auth::Password => ["--user", USER, "--pass", PASSWORD].map(String::from).to_vec(),
            Auth::Nkey(seed_file) => {
                let user = nkeys::KeyPair::new_user();
                std::fs::write(seed_file, user.seed().unwrap()).unwrap();
                let config = seed_file.with_extension("conf");
                let users = format!("authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n", user.public_key());
                std::fs::write(&config, users).unwrap();
                vec!["-c".into(), config.to_str().unwrap().to_owned()]
            }
        };
        args.extend(options.iter().map(|o| o.to_string()));
        let mut server = NatsServer { port, auth, options: args, child: None };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (scripts/setup.sh installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "nats-server did not come up on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: every client loses its connection at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Killed, and started again on the same port (so clients reconnect to it).
    pub async fn restart(&mut self, down_for: Duration) {
        self.kill();
        tokio::time::sleep(down_for).await;
        self.spawn().await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A relay configuration of `fixture` whose peers are reached through this server.
    pub fn config(&self, fixture: &Fixture) -> Config {
        let mut config = fixture.config();
        config.peers.bus = PeerBus::Nats;
        config.peers.nats_url = vec![self.url()];
        match &self.auth {
            Auth::Password => {
                config.peers.nats_user = Some(USER.into());
                config.peers.nats_password = Some(PASSWORD.into());
            }
            Auth::Nkey(seed_file) => config.peers.nats_nkey_file = Some(seed_file.clone()),
        }
        config
    }

    /// The same, for the relay binary's environment (password authentication).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CAMPFIRE_PEERS", "nats".into()),
            ("CAMPFIRE_NATS_URL", self.url()),
            ("CAMPFIRE_NATS_USER", USER.into()),
            ("CAMPFIRE_NATS_PASSWORD", PASSWORD.into()),
        ]
    }

    /// A client of the server's account, as anyone holding its credentials (but not the relays'
    /// notify key) could connect.
    pub async fn outsider(&self) -> async_nats::Client {
        async_nats::ConnectOptions::with_user_and_password(USER.into(), PASSWORD.into())
            .connect(self.url())
            .await
            .expect("connects to nats-server")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
