//! The VTN's MQTT notifier (OpenADR 3.1): where the VTN offers one, the VEN subscribes to its
//! event topics and its own VEN object's, and runs a poll the moment an event is created, changed or deleted, instead
//! of at the next poll. A notification only wakes the VEN: what it acts on is what it then
//! reads from the VTN's REST API, so a lost, repeated or forged notification costs a poll and
//! nothing else, and polling goes on as the safety net.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gridgate_config::{MqttBroker, MqttTls};
use openleadr_wire::subscription::{
    MqttNotifierAuthentication, NotifierTopicsResponse, NotifiersResponse,
};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The notifier as `gridgate openadr status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NotifierStatus {
    /// What the VEN does: "off", "polling only: ...", "subscribed", "connecting".
    pub state: String,
    /// The broker the VTN named.
    pub broker: Option<String>,
    /// The topics subscribed.
    pub topics: Vec<String>,
    /// Notifications received since the gateway started.
    pub received: u64,
    /// The last error, when not subscribed.
    pub last_error: Option<String>,
}

/// How to reach the VTN for the notifier's own requests (the client library keeps its token
/// to itself): the same HTTP client, URLs and credentials as the VEN's session.
pub struct Access {
    pub http: reqwest::Client,
    pub base: url::Url,
    pub token_url: url::Url,
    pub client_id: String,
    pub secret: String,
    /// The CA of `[openadr] ca_file`, which an `mqtts` broker's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// The VEN name: its own topics are found by it, and it is the MQTT client id (one
    /// connection per VEN).
    pub ven_name: String,
}

/// When the VTN offers no notifier, how long before asking again (a VTN upgrade).
const ASK_AGAIN: Duration = Duration::from_secs(600);
/// The longest wait before reconnecting to a broker that went away.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A notification carries the whole event: a few KiB; anything this large is not one.
const MAX_PACKET: usize = 1 << 20;

/// Why one subscription ended.
enum Ended {
    /// The VTN has no MQTT notifier.
    NotOffered,
    /// The VEN's first poll has not registered it yet: its own topics need its id.
    NotRegistered,
    /// Something failed; the next attempt starts over with a fresh token.
    Failed(String),
}

/// Subscribes and keeps subscribed until `cancel`, waking `wake` on every notification (and
/// on every (re)connection: what changed while away is read at once).
pub async fn listen(
    access: Access,
    wake: Arc<Notify>,
    state: watch::Sender<NotifierStatus>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    let mut last_warned: Option<String> = None;
    loop {
        let ended = tokio::select! {
            _ = cancel.cancelled() => return,
            e = subscribe(&access, &wake, &state) => e,
        };
        let wait = match ended {
            Ended::NotRegistered => {
                state.send_modify(|s| s.state = "waiting for the VEN's registration".into());
                Duration::from_secs(1)
            }
            Ended::NotOffered => {
                info!(vtn = %access.base, "the VTN offers no MQTT notifier: the VEN polls only");
                state.send_modify(|s| {
                    s.state = "polling only: the VTN offers no MQTT notifier".into();
                    s.broker = None;
                    s.topics.clear();
                });
                ASK_AGAIN
            }
            Ended::Failed(why) => {
                if last_warned.as_deref() != Some(why.as_str()) {
                    warn!(vtn = %access.base, "OpenADR notifier: {why}; polling meanwhile, subscribing again");
                    last_warned = Some(why.clone());
                } else {
                    debug!(vtn = %access.base, "OpenADR notifier: {why}");
                }
                state.send_modify(|s| {
                    s.state = "connecting".into();
                    s.last_error = Some(why);
                });
                let w = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                w
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One subscription: a token, the notifier's binding and topics, then the broker until the
/// connection ends.
async fn subscribe(access: &Access, wake: &Notify, state: &watch::Sender<NotifierStatus>) -> Ended {
    let token = match token(access).await {
        Ok(t) => t,
        Err(e) => return Ended::Failed(format!("token: {e}")),
    };
    let offered: NotifiersResponse = match get(access, &token, "notifiers").await {
        Ok(o) => o,
        Err(e) => return Ended::Failed(format!("notifiers: {e}")),
    };
    let Some(binding) = offered.mqtt else {
        return Ended::NotOffered;
    };
    // Every event's changes (the VEN reads what it may see), and its own object's: the
    // VTN's operator gives it targets there.
    let vens: Vec<openleadr_wire::Ven> = match get_with(
        access,
        &token,
        "vens",
        &[("venName", access.ven_name.as_str())],
    )
    .await
    {
        Ok(v) => v,
        Err(e) => return Ended::Failed(format!("VEN: {e}")),
    };
    let Some(ven) = vens.first() else {
        return Ended::NotRegistered;
    };
    let mut topics = Vec::new();
    for path in [
        "notifiers/mqtt/topics/events".to_string(),
        format!("notifiers/mqtt/topics/vens/{}", ven.id.as_str()),
    ] {
        let t: NotifierTopicsResponse = match get(access, &token, &path).await {
            Ok(t) => t,
            Err(e) => return Ended::Failed(format!("{path}: {e}")),
        };
        match t.topics.all {
            Some(all) => topics.push(all),
            None => topics.extend(
                [
                    t.topics.create,
                    Some(t.topics.update),
                    Some(t.topics.delete),
                ]
                .into_iter()
                .flatten(),
            ),
        }
    }
    let Some(uri) = binding.uris.first() else {
        return Ended::Failed("the VTN's MQTT binding names no broker".into());
    };
    let broker = match broker(uri, access.ca_file.as_ref()) {
        Ok(b) => b,
        Err(e) => return Ended::Failed(e),
    };
    let credentials = match &binding.authentication {
        MqttNotifierAuthentication::Anonymous => None,
        MqttNotifierAuthentication::Oauth2BearerToken { username } => Some((
            username.replace("{clientID}", &access.client_id),
            token.clone(),
        )),
    };
    let mut opts = match gridgate_acquire::broker::options(
        &broker,
        &format!("gridgate-ven-{}", access.ven_name),
        Duration::from_secs(30),
        credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
    ) {
        Ok(o) => o,
        Err(e) => return Ended::Failed(format!("broker TLS: {e}")),
    };
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (client, mut events) = AsyncClient::new(opts, 16);
    state.send_modify(|s| {
        s.state = "connecting".into();
        s.broker = Some(broker.to_string());
        s.topics = topics.clone();
    });
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                for t in &topics {
                    if let Err(e) = client.subscribe(t.as_str(), QoS::AtLeastOnce).await {
                        return Ended::Failed(format!("subscribe {t}: {e}"));
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                info!(broker = %broker, topics = ?topics, "OpenADR VEN subscribed to the VTN's event notifications");
                state.send_modify(|s| {
                    s.state = "subscribed".into();
                    s.last_error = None;
                });
                // Whatever changed while not subscribed is read now.
                wake.notify_one();
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                debug!(topic = %p.topic, bytes = p.payload.len(), "OpenADR notification");
                state.send_modify(|s| s.received += 1);
                wake.notify_one();
            }
            Ok(_) => {}
            Err(e) => return Ended::Failed(format!("broker {broker}: {e}")),
        }
    }
}

/// The broker of a notifier URI: `tcp://`/`mqtt://` plain, `ssl://`/`mqtts://` TLS with
/// `[openadr] ca_file` as its trust anchor.
fn broker(uri: &str, ca: Option<&PathBuf>) -> Result<MqttBroker, String> {
    let u = url::Url::parse(uri).map_err(|e| format!("notifier URI {uri:?}: {e}"))?;
    let host = u
        .host_str()
        .ok_or_else(|| format!("notifier URI {uri:?} has no host"))?
        .to_string();
    let tls = match u.scheme() {
        "tcp" | "mqtt" => None,
        "ssl" | "mqtts" | "tls" => Some(MqttTls {
            ca: ca.cloned().ok_or_else(|| {
                format!("the VTN's broker {uri} is TLS: [openadr] ca_file must name the CA that signed its certificate")
            })?,
            cert: None,
            key: None,
        }),
        other => return Err(format!("notifier URI {uri:?}: scheme {other:?} is not MQTT")),
    };
    let port = u.port().unwrap_or(if tls.is_some() { 8883 } else { 1883 });
    Ok(MqttBroker { host, port, tls })
}

/// An OAuth2 access token by the client-credentials grant (RFC 6749 4.4), as the VEN's
/// client gets its own.
async fn token(a: &Access) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Answer {
        access_token: String,
    }
    let res = a
        .http
        .post(a.token_url.clone())
        .basic_auth(&a.client_id, Some(&a.secret))
        .header("Accept", "application/json")
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("the token endpoint answered {}", res.status()));
    }
    res.json::<Answer>()
        .await
        .map(|a| a.access_token)
        .map_err(|e| e.to_string())
}

async fn get<T: serde::de::DeserializeOwned>(
    a: &Access,
    token: &str,
    path: &str,
) -> Result<T, String> {
    get_with(a, token, path, &[]).await
}

async fn get_with<T: serde::de::DeserializeOwned>(
    a: &Access,
    token: &str,
    path: &str,
    query: &[(&str, &str)],
) -> Result<T, String> {
    let url = a.base.join(path).map_err(|e| e.to_string())?;
    let res = a
        .http
        .get(url)
        .query(query)
        .bearer_auth(token)
        .header("Accept", "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !res.status().is_success() {
        return Err(format!("the VTN answered {}", res.status()));
    }
    res.json::<T>().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifier_uris_become_brokers() {
        let b = broker("tcp://vtn.example:1884", None).unwrap();
        assert_eq!(
            (b.host.as_str(), b.port, b.tls.is_none()),
            ("vtn.example", 1884, true)
        );
        let b = broker("mqtt://vtn.example", None).unwrap();
        assert_eq!(b.port, 1883);
        let ca = PathBuf::from("/etc/gridgate/vtn-ca.pem");
        let b = broker("ssl://vtn.example", Some(&ca)).unwrap();
        assert_eq!(b.port, 8883);
        assert_eq!(b.tls.unwrap().ca, ca);
        assert!(
            broker("mqtts://vtn.example", None)
                .unwrap_err()
                .contains("ca_file")
        );
        assert!(
            broker("ws://vtn.example", None)
                .unwrap_err()
                .contains("not MQTT")
        );
        assert!(broker("vtn.example:1883", None).is_err());
    }
}
