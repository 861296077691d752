//! The embedded MQTT broker (rumqttd, in-process) for gateways without Mosquitto.
//!
//! The gateway's own MQTT source connects to it over loopback like to any
//! broker, so the ack path is the same code. **Durability caveat:** rumqttd
//! acknowledges a sensor's PUBLISH when its router accepts it, in memory,
//! before the gateway has committed it; a crash of the gateway process can
//! lose what rumqttd had acknowledged but not yet delivered. Use an external
//! broker with persistence (Mosquitto) where that matters; ARCHITECTURE.md
//! states this limit.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rumqttd::{Config, ConnectionSettings, RouterConfig, ServerSettings};
use tracing::{error, info};

use crate::config::EmbeddedBrokerConfig;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("embedded broker thread could not start: {0}")]
    Spawn(std::io::Error),
    #[error("embedded broker did not start listening on {0} within {1:?}")]
    NotListening(SocketAddr, Duration),
}

fn rumqttd_config(cfg: &EmbeddedBrokerConfig, inflight: u16) -> Config {
    let connections = ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: usize::try_from(cfg.max_payload_bytes.as_u64()).unwrap_or(usize::MAX),
        // How many unacked QoS 1 messages rumqttd sends a client at once.
        max_inflight_count: usize::from(inflight),
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = ServerSettings {
        name: "outpost-v4".into(),
        listen: cfg.listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: cfg.max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: usize::try_from(cfg.max_segment_bytes.as_u64()).unwrap_or(usize::MAX),
            max_segment_count: cfg.max_segment_count,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    }
}

/// Starts rumqttd on its own threads and waits until it accepts connections.
/// The broker lives as long as the process.
pub fn start(cfg: &EmbeddedBrokerConfig, inflight: u16) -> Result<(), BrokerError> {
    let config = rumqttd_config(cfg, inflight);
    std::thread::Builder::new()
        .name("embedded-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                error!(error = %e, "Embedded broker stopped.");
            }
        })
        .map_err(BrokerError::Spawn)?;
    let timeout = Duration::from_secs(5);
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&cfg.listen, Duration::from_millis(200)).is_ok() {
            info!(listen = %cfg.listen, "Embedded MQTT broker listening.");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(BrokerError::NotListening(cfg.listen, timeout))
}
