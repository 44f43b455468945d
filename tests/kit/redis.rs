//! A private `redis-server` for the fleet's tests and benchmark: Debian's package, started on a
//! free loopback port with nothing saved to disk.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// A private `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl Redis {
    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let dir = std::env::temp_dir().join(format!("cg-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        let mut redis = Self {
            child: None,
            port,
            dir,
        };
        redis.restart();
        redis
    }

    /// Starts it (again) on its port, and waits until it answers PING.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/run installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answered = redis::Client::open(self.url())
                .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(100)))
                .and_then(|mut connection| redis::cmd("PING").query::<String>(&mut connection));
            if answered.is_ok() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server answers PING within 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Makes it refuse every client but this kit's (a password it does not give them, and their
    /// connections cut), or welcome them again: an outage that keeps what the store holds.
    pub fn refuse_clients(&self, refuse: bool) {
        // Locked out, it takes the password it was given to let clients back in.
        let mut connection = if refuse {
            self.connection()
        } else {
            redis::Client::open(format!("redis://:locked-out@127.0.0.1:{}/0", self.port))
                .and_then(|client| client.get_connection())
                .expect("the test's redis-server answers with its password")
        };
        let password = if refuse { "locked-out" } else { "" };
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(password)
            .query(&mut connection)
            .expect("redis answers");
        if refuse {
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("normal")
                .arg("SKIPME")
                .arg("yes")
                .query(&mut connection)
                .expect("redis answers");
        }
    }

    /// Kills it at once (SIGKILL): what it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .and_then(|client| client.get_connection())
            .expect("the test's redis-server answers")
    }

    /// The commands Redis has run that the gateway sends: its scripts (EVALSHA, and EVAL when a
    /// script was not loaded yet) and its probes (PING); each is one round trip.
    pub fn round_trips(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .expect("redis answers");
        info.lines()
            .filter(|line| {
                ["cmdstat_evalsha:", "cmdstat_eval:", "cmdstat_ping:"]
                    .iter()
                    .any(|name| line.starts_with(name))
            })
            .filter_map(|line| {
                line.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    /// Every key and value, as text.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*")
            .query(&mut connection)
            .expect("redis answers");
        keys.into_iter()
            .filter_map(|key| {
                let kind: String = redis::cmd("TYPE")
                    .arg(&key)
                    .query(&mut connection)
                    .expect("redis answers");
                let value = match kind.as_str() {
                    // Expired since KEYS listed it.
                    "none" => return None,
                    // `None`: expired since TYPE.
                    "string" => redis::cmd("GET")
                        .arg(&key)
                        .query::<Option<String>>(&mut connection)
                        .expect("redis answers")?,
                    "set" => redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query::<Vec<String>>(&mut connection)
                        .expect("redis answers")
                        .join(","),
                    other => panic!("unexpected {other} at {key}"),
                };
                Some((key, value))
            })
            .collect()
    }

    /// Writes `value` at `key` as it is, as the gateway never would.
    pub fn set_raw(&self, key: &str, value: &str) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query(&mut self.connection())
            .expect("redis answers");
    }

    /// Adds `member` to the set at `key`, as the gateway never would for most keys.
    pub fn add_to_set(&self, key: &str, member: &str) {
        let _: i64 = redis::cmd("SADD")
            .arg(key)
            .arg(member)
            .query(&mut self.connection())
            .expect("redis answers");
    }

    /// Makes `key` expire `after` from now.
    pub fn expire_in(&self, key: &str, after: Duration) {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(u64::try_from(after.as_millis()).expect("a short time"))
            .query(&mut self.connection())
            .expect("redis answers");
    }

    /// Deletes `key`, as its expiry would.
    pub fn delete(&self, key: &str) {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query(&mut self.connection())
            .expect("redis answers");
    }

    /// Whether a key whose name contains `key` holds a value that contains `value`.
    pub fn holds(&self, key: &str, value: &str) -> bool {
        self.dump()
            .iter()
            .any(|(k, v)| k.contains(key) && v.contains(value))
    }

    /// Ends every cooldown now, as time would: the users' entries go, request ids stay.
    pub fn end_cooldowns(&self) {
        let mut connection = self.connection();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("*:{g}:u:*")
            .query(&mut connection)
            .expect("redis answers");
        for key in keys {
            let _: i64 = redis::cmd("DEL")
                .arg(key)
                .query(&mut connection)
                .expect("redis answers");
        }
    }

    /// Checks what docs/api.md §6 promises of the store: every key starts with the prefix, and no
    /// key or value holds a username.
    pub fn assert_holds_no(&self, usernames: &[&str]) {
        let dump = self.dump();
        assert!(!dump.is_empty(), "the fleet wrote nothing");
        for (key, value) in dump {
            assert!(key.starts_with("cognito-gateway:{g}:"), "{key}");
            for name in usernames {
                let name = name.to_lowercase();
                assert!(
                    !key.to_lowercase().contains(&name) && !value.to_lowercase().contains(&name),
                    "{name} in {key} = {value}"
                );
            }
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
