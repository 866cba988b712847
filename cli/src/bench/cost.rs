//! What a run costs, read from nats-server's own counters (its monitoring endpoints `/jsz`
//! and `/varz`) and from the manager's CPU time in `/proc`: a snapshot before and after, and
//! the difference per task.

use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// nats-server's counters at one moment, over every server of the harness.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// Each stream's last sequence: how many messages it ever stored (a KV bucket's stream
    /// counts every put and deletion).
    pub last_seq: BTreeMap<String, u64>,
    /// JetStream API requests served (`/jsz` `api.total`: stream and consumer management and
    /// info; publishes, acks, fetches and direct gets are not counted), summed.
    pub api_calls: u64,
    /// Messages received from clients and routes (`/varz` `in_msgs`), summed.
    pub in_msgs: u64,
    /// Bytes JetStream holds on disk (`/jsz` `storage`), summed.
    pub storage_bytes: u64,
    /// What each stream holds now: messages and bytes (the largest replica's).
    pub held: BTreeMap<String, (u64, u64)>,
}

/// The cost of a run, per task.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cost {
    /// Messages stored in any stream (puts, deletions, placements, reports, journal).
    pub stored_per_task: f64,
    /// Of which, per stream.
    pub stored_per_task_by_stream: BTreeMap<String, f64>,
    pub api_calls_per_task: f64,
    pub msgs_in_per_task: f64,
    /// The manager's CPU time (user + system), if its process could be read.
    pub manager_cpu_ms_per_task: Option<f64>,
    /// JetStream's store at the end.
    pub storage_bytes: u64,
}

impl Counters {
    /// Reads `/jsz` and `/varz` of each monitoring port (on loopback).
    pub async fn read(ports: &[u16]) -> Result<Counters> {
        let mut c = Counters::default();
        for port in ports {
            let jsz = get_json(*port, "/jsz?accounts=true&streams=true").await?;
            let varz = get_json(*port, "/varz").await?;
            c.add(&jsz, &varz)?;
        }
        Ok(c)
    }

    fn add(&mut self, jsz: &serde_json::Value, varz: &serde_json::Value) -> Result<()> {
        let number = |v: &serde_json::Value, what: &str| {
            v.as_u64()
                .ok_or_else(|| anyhow!("nats-server's monitoring has no number at {what}"))
        };
        self.api_calls += number(&jsz["api"]["total"], "/jsz api.total")?;
        self.storage_bytes += number(&jsz["storage"], "/jsz storage")?;
        self.in_msgs += number(&varz["in_msgs"], "/varz in_msgs")?;
        let accounts = jsz["account_details"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for stream in accounts
            .iter()
            .filter_map(|a| a["stream_detail"].as_array())
            .flatten()
        {
            let name = stream["name"]
                .as_str()
                .ok_or_else(|| anyhow!("a stream without a name in /jsz"))?;
            let last = number(&stream["state"]["last_seq"], "/jsz stream last_seq")?;
            let held = (
                stream["state"]["messages"].as_u64().unwrap_or(0),
                stream["state"]["bytes"].as_u64().unwrap_or(0),
            );
            let seen = self.held.entry(name.to_string()).or_default();
            *seen = (*seen).max(held);
            // Replicas hold the same sequence: a stream counts once.
            let seen = self.last_seq.entry(name.to_string()).or_default();
            *seen = (*seen).max(last);
        }
        Ok(())
    }

    /// What happened between `self` and `later`, per task, with the manager's CPU time
    /// spent in between.
    pub fn cost(&self, later: &Counters, tasks: usize, cpu: Option<std::time::Duration>) -> Cost {
        let per = |n: u64| n as f64 / tasks.max(1) as f64;
        let by_stream: BTreeMap<String, f64> = later
            .last_seq
            .iter()
            .map(|(name, last)| {
                let before = self.last_seq.get(name).copied().unwrap_or(0);
                (name.clone(), per(last.saturating_sub(before)))
            })
            .filter(|(_, n)| *n > 0.0)
            .collect();
        Cost {
            stored_per_task: by_stream.values().sum(),
            stored_per_task_by_stream: by_stream,
            api_calls_per_task: per(later.api_calls.saturating_sub(self.api_calls)),
            msgs_in_per_task: per(later.in_msgs.saturating_sub(self.in_msgs)),
            manager_cpu_ms_per_task: cpu.map(|d| d.as_secs_f64() * 1000.0 / tasks.max(1) as f64),
            storage_bytes: later.storage_bytes,
        }
    }
}

/// A process's CPU time so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: u32) -> Result<std::time::Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    cpu_of_stat(&stat)
}

/// Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
const TICKS_PER_S: f64 = 100.0;

fn cpu_of_stat(stat: &str) -> Result<std::time::Duration> {
    // The command name (field 2) may hold spaces: fields are counted after its `)`.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow!("no `)` in /proc stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .ok_or_else(|| anyhow!("/proc stat has too few fields"))?
            .parse()
            .context("a /proc stat time")
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(std::time::Duration::from_secs_f64(
        total as f64 / TICKS_PER_S,
    ))
}

/// `GET path` on 127.0.0.1:`port`, as JSON: enough HTTP for nats-server's monitoring.
async fn get_json(port: u16, path: &str) -> Result<serde_json::Value> {
    let read = async {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        conn.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(reply)
    };
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .map_err(|_| anyhow!("nats-server's monitoring on port {port} did not answer {path}"))?
        .with_context(|| format!("asking nats-server's monitoring for {path}"))?;
    let text = String::from_utf8_lossy(&reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("a reply from nats-server's monitoring without a body");
    };
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "nats-server's monitoring answered {path} with {}",
            head.lines().next().unwrap_or("")
        );
    }
    serde_json::from_str(body).with_context(|| format!("nats-server's {path} is not JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snapshot(streams: &[(&str, u64)], api: u64, in_msgs: u64) -> Counters {
        let jsz = json!({
            "api": {"total": api, "errors": 0},
            "storage": 1000,
            "account_details": [{"stream_detail": streams.iter().map(|(n, s)| json!({
                "name": n, "state": {"last_seq": s, "messages": 1}
            })).collect::<Vec<_>>()}]
        });
        let mut c = Counters::default();
        c.add(&jsz, &json!({"in_msgs": in_msgs})).unwrap();
        c
    }

    #[test]
    fn the_cost_is_what_the_counters_moved_per_task() {
        let before = snapshot(&[("CUBE_EVENTS", 5), ("KV_cube-tasks", 10)], 100, 1000);
        let after = snapshot(
            &[
                ("CUBE_EVENTS", 105),
                ("KV_cube-tasks", 310),
                ("CUBE_WORK", 100),
            ],
            500,
            2000,
        );
        let cost = before.cost(&after, 100, Some(std::time::Duration::from_millis(250)));
        assert_eq!(cost.stored_per_task, 1.0 + 3.0 + 1.0);
        assert_eq!(cost.stored_per_task_by_stream["KV_cube-tasks"], 3.0);
        assert_eq!(cost.api_calls_per_task, 4.0);
        assert_eq!(cost.msgs_in_per_task, 10.0);
        assert_eq!(cost.manager_cpu_ms_per_task, Some(2.5));
    }

    #[test]
    fn replicas_of_a_stream_count_once() {
        let mut c = snapshot(&[("S", 7)], 1, 1);
        let jsz = json!({"api": {"total": 2}, "storage": 5, "account_details": [
            {"stream_detail": [{"name": "S", "state": {"last_seq": 7}}]}]});
        c.add(&jsz, &json!({"in_msgs": 3})).unwrap();
        assert_eq!(c.last_seq["S"], 7);
        assert_eq!((c.api_calls, c.in_msgs), (3, 4));
    }

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "1234 (cube manager) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0";
        assert_eq!(
            cpu_of_stat(stat).unwrap(),
            std::time::Duration::from_secs(3)
        );
    }
}
