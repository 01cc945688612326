//! A minimal MQTT 3.1.1 connection over TCP, with the packet ids in the caller's hands: the
//! soak must know which message each PUBACK acknowledges, across reconnections, which an
//! event-loop client (that numbers and resends on its own) does not tell.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{Connect, Login, Packet};
use rumqttc::mqttbytes::{self, QoS};
use thiserror::Error;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// The largest packet read or written.
const MAX_PACKET: usize = 512 * 1024;
/// How long a connection attempt (TCP and CONNACK) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection failed or ended.
#[derive(Debug, Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("connection lost: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not MQTT.
    #[error("malformed packet: {0:?}")]
    Malformed(mqttbytes::Error),
    /// The broker refused the CONNECT or answered it with something else.
    #[error("CONNECT refused: {0}")]
    Refused(String),
    /// No CONNACK within the timeout.
    #[error("no CONNACK within {CONNECT_TIMEOUT:?}")]
    Timeout,
}

/// Who connects.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The client id.
    pub client_id: String,
    /// The user name.
    pub username: String,
    /// The password (a SAS token).
    pub password: String,
}

/// The reading half of a connection.
#[derive(Debug)]
pub struct Reader {
    half: OwnedReadHalf,
    buffer: BytesMut,
}

/// The writing half of a connection: packets are gathered, then flushed together.
#[derive(Debug)]
pub struct Writer {
    half: OwnedWriteHalf,
    buffer: BytesMut,
}

/// Connects with `clean_session` and a keep-alive of 60 s; gives both halves and the
/// CONNACK's session-present flag.
///
/// # Errors
///
/// When the broker cannot be reached, refuses, or does not answer in time.
pub async fn connect(
    addr: SocketAddr,
    credentials: &Credentials,
    clean_session: bool,
) -> Result<(Reader, Writer, bool), WireError> {
    let attempt = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut reader = Reader {
            half: read,
            buffer: BytesMut::with_capacity(64 * 1024),
        };
        let mut writer = Writer {
            half: write,
            buffer: BytesMut::with_capacity(64 * 1024),
        };
        let mut connect = Connect::new(credentials.client_id.clone());
        connect.keep_alive = 60;
        connect.clean_session = clean_session;
        connect.login = Some(Login::new(
            credentials.username.clone(),
            credentials.password.clone(),
        ));
        writer.queue(&Packet::Connect(connect));
        writer.flush().await?;
        match reader.next().await? {
            Packet::ConnAck(ack) if ack.code == mqttbytes::v4::ConnectReturnCode::Success => {
                Ok((reader, writer, ack.session_present))
            }
            Packet::ConnAck(ack) => Err(WireError::Refused(format!("{:?}", ack.code))),
            other => Err(WireError::Refused(format!("answered with {other:?}"))),
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| WireError::Timeout)?
}

impl Reader {
    /// The next packet.
    ///
    /// # Errors
    ///
    /// When the connection ends or the bytes are not MQTT.
    pub async fn next(&mut self) -> Result<Packet, WireError> {
        loop {
            match Packet::read(&mut self.buffer, MAX_PACKET) {
                Ok(packet) => return Ok(packet),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(WireError::Malformed(e)),
            }
            if self.half.read_buf(&mut self.buffer).await? == 0 {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

impl Writer {
    /// Adds `packet` to what the next flush writes.
    ///
    /// # Panics
    ///
    /// When the packet is over 512 KiB (the soak's are a few hundred bytes).
    pub fn queue(&mut self, packet: &Packet) {
        packet
            .write(&mut self.buffer, MAX_PACKET)
            .expect("soak packets are small");
    }

    /// Writes what was queued.
    ///
    /// # Errors
    ///
    /// When the connection fails.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        if !self.buffer.is_empty() {
            self.half.write_all(&self.buffer).await?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Queues a QoS 1 publication.
    pub fn publish(&mut self, topic: &str, pkid: u16, payload: bytes::Bytes) {
        let mut publish = mqttbytes::v4::Publish::from_bytes(topic, QoS::AtLeastOnce, payload);
        publish.pkid = pkid;
        self.queue(&Packet::Publish(publish));
    }
}
