//! The HTTP sink: batches POSTed as CloudEvents (`application/cloudevents-batch+json`, a JSON
//! array of events), the format OpenMeter- or Lago-style collectors ingest.
//!
//! Background path (a delivery loop). One HTTP/1.1 request per batch on a fresh connection
//! (`Connection: close`); any 2xx answer means the collector has every event, anything else
//! (or no answer within `timeout`) is an error and the batch is sent again later. Each event's
//! `id` is the record's idempotency key, so a collector that dedupes by `id` (as CloudEvents
//! consumers should) keeps each record once. `https://` collectors are reached over rustls
//! (`tls_client`: system roots or `ca_file`, optional client certificate); an `auth_header` is
//! sent as `Authorization` and never logged.

use super::{Lines, Sink};
use crate::http1::head::read_response_head;
use crate::tls_client::ClientTls;
use async_trait::async_trait;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// CloudEvents `type` prefix; the record type is appended (`dev.weir.usage.stop`).
pub const EVENT_TYPE: &str = "dev.weir.usage";

/// A CloudEvents collector.
pub struct HttpSink {
    addr: String,
    host: String,
    path: String,
    timeout: Duration,
    source: String,
    tls: Option<ClientTls>,
    auth_header: Option<String>,
}

impl HttpSink {
    /// POST to `http://{host}{path}` (`https://` with `tls`), connecting to `addr`, with
    /// `Authorization: {auth_header}` when set.
    pub fn new(
        addr: &str,
        host: &str,
        path: &str,
        timeout: Duration,
        tls: Option<ClientTls>,
        auth_header: Option<String>,
    ) -> HttpSink {
        let node = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "weir".into());
        HttpSink {
            addr: addr.into(),
            host: host.into(),
            path: path.into(),
            timeout,
            source: format!("weir://{node}"),
            tls,
            auth_header,
        }
    }

    /// The CloudEvents batch body for `lines`.
    pub fn body(&self, lines: &Lines) -> Result<Vec<u8>, String> {
        let events: Vec<Value> = lines
            .iter()
            .map(|l| {
                let record: Value =
                    serde_json::from_slice(l).map_err(|e| format!("spooled record is not JSON: {e}"))?;
                let kind = record["record"].as_str().unwrap_or("record").to_string();
                let subject =
                    record["connection_id"].as_str().or(record["object_id"].as_str()).unwrap_or("").to_string();
                Ok(json!({
                    "specversion": "1.0",
                    "id": record["idempotency_key"],
                    "source": self.source,
                    "type": format!("{EVENT_TYPE}.{kind}"),
                    "subject": subject,
                    "time": record["at"],
                    "datacontenttype": "application/json",
                    "data": record,
                }))
            })
            .collect::<Result<_, String>>()?;
        serde_json::to_vec(&events).map_err(|e| e.to_string())
    }

    async fn post(&self, body: &[u8]) -> Result<u16, String> {
        let tcp = TcpStream::connect(&self.addr).await.map_err(|e| format!("connect {}: {e}", self.addr))?;
        match &self.tls {
            None => self.exchange(tcp, body).await,
            Some(tls) => {
                let addr = tcp.peer_addr().map_err(|e| format!("connect {}: {e}", self.addr))?;
                let stream = tls
                    .connector()
                    .connect(tls.server_name(addr), tcp)
                    .await
                    .map_err(|e| format!("{}: {}", self.addr, crate::tls_client::explain(&e.to_string())))?;
                self.exchange(stream, body).await
            }
        }
    }

    /// Send the request over `s` and read the answer's status.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(&self, mut s: S, body: &[u8]) -> Result<u16, String> {
        let auth = self.auth_header.as_ref().map_or_else(String::new, |h| format!("Authorization: {h}\r\n"));
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/cloudevents-batch+json\r\nContent-Length: {}\r\n{auth}Connection: close\r\nUser-Agent: weir\r\n\r\n",
            self.path,
            self.host,
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        s.write_all(body).await.map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let answer = read_response_head(&mut s).await.map_err(|e| e.to_string())?;
        Ok(answer.status)
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&self, lines: Lines) -> Result<(), String> {
        let body = self.body(&lines)?;
        match tokio::time::timeout(self.timeout, self.post(&body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(format!("collector answered {status}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_the_key_type_and_record() {
        let sink = HttpSink::new("127.0.0.1:1", "collector", "/e", Duration::from_secs(1), None, None);
        let line = br#"{"record":"stop","idempotency_key":"c1:3","connection_id":"c1","at":"2026-11-22T10:00:00.000Z","tenant":"acme"}"#.to_vec();
        let body: Value = serde_json::from_slice(&sink.body(&[line].into_iter().collect()).unwrap()).unwrap();
        let e = &body[0];
        assert_eq!(
            (e["specversion"].as_str(), e["id"].as_str(), e["type"].as_str()),
            (Some("1.0"), Some("c1:3"), Some("dev.weir.usage.stop"))
        );
        assert_eq!((e["subject"].as_str(), e["time"].as_str()), (Some("c1"), Some("2026-11-22T10:00:00.000Z")));
        assert_eq!(e["data"]["tenant"], "acme");
    }
}
