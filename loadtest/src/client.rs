//! One terminal's connection to the gateway.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cardgate_codec::codec::Frame;
use cardgate_codec::crypto::SignOnInput;
use cardgate_codec::{
    AccessCheck, AccessReason, AccessResult, BLACKLIST_PAGE_FIRST, BLACKLIST_PAGE_LAST_IN_RUN, BLACKLIST_PAGE_MORE,
    BalanceInquiry, BlacklistAck, BlacklistPage, BlacklistPageKind, BlacklistSync, CardNo, CodecError,
    DOOR_PAGE_LAST_IN_RUN, Direction, DoorCacheAck, DoorCacheSync, DoorEvent, DoorEventsBatch, DoorEventsResult,
    ErrorCode, Heartbeat, Hello, Message, OfflineBatch, OfflineLimits, OfflineResult, OfflineSale, Proof, Punch,
    PunchResult, Purchase, Reversal, SIGN_ON_OFFLINE_LIMITS, Side, SignOnOk, TerminalCodec, TerminalSecret,
};
use futures::{SinkExt, StreamExt};

use crate::doors::{CacheError, DoorCache};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

/// Initial read and write buffer of a connection. A terminal's frames are under 100
/// bytes; the load test holds thousands of connections, and tokio-util's default of 8 KiB
/// each would cost more memory than the gateway itself. Buffers grow when pipelining.
const CONNECTION_BUF_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("protocol: {0}")]
    Codec(#[from] CodecError),
    #[error("the gateway closed the connection with {0:?}")]
    Refused(ErrorCode),
    #[error("the gateway closed the connection")]
    Closed,
    #[error("unexpected message {0:?}")]
    Unexpected(Box<Message>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Runs one `door_sync` reads at most: a full list of 20,000 entries is about 160.
const DOOR_SYNC_RUNS_MAX: u64 = 100_000;
/// Runs that cannot be applied before `door_sync` gives up.
const DOOR_SYNC_BROKEN_MAX: u32 = 3;

/// Why `door_sync` did not bring the cache up to date.
#[derive(Debug, thiserror::Error)]
pub enum DoorSyncError {
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("the door cache: {0}")]
    Cache(CacheError),
    #[error("the door cache sync does not end")]
    NoEnd,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub struct TerminalClient {
    conn: Framed<TcpStream, TerminalCodec>,
    pub terminal_id: u64,
    pub sign_on: SignOnOk,
    next_request_id: u32,
    /// The newest version a BLACKLIST_PUSH announced (they arrive between answers).
    pub pushed_version: Option<u64>,
    /// The newest door cache version a DOOR_CACHE_PUSH announced (door controllers).
    pub door_pushed_version: Option<u64>,
    /// The terminal's copy of the blacklist and its version, kept by `blacklist_sync`.
    pub blacklist: std::collections::BTreeSet<u64>,
    pub blacklist_version: u64,
    /// What the gateway said this terminal may sell offline (POS terminals).
    pub offline_limits: Option<OfflineLimits>,
    secret: TerminalSecret,
}

impl TerminalClient {
    /// Connects and signs on.
    pub async fn connect(
        addr: SocketAddr,
        terminal_id: u64,
        secret: &TerminalSecret,
    ) -> Result<TerminalClient, ClientError> {
        let stream = TcpStream::connect(addr).await.map_err(ClientError::Connect)?;
        TerminalClient::sign_on(stream, terminal_id, secret).await
    }

    /// Connects from a chosen local address (port picked by the kernel) and signs on.
    /// One source address reaches one gateway address from at most ~28,000 ephemeral
    /// ports; the load test spreads bigger fleets over 127.0.0.2, 127.0.0.3, ...
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<IpAddr>,
        terminal_id: u64,
        secret: &TerminalSecret,
    ) -> Result<TerminalClient, ClientError> {
        let stream = connect_stream(addr, source).await.map_err(ClientError::Connect)?;
        TerminalClient::sign_on(stream, terminal_id, secret).await
    }

    /// Signs on over an already connected stream.
    pub async fn sign_on(
        stream: TcpStream,
        terminal_id: u64,
        secret: &TerminalSecret,
    ) -> Result<TerminalClient, ClientError> {
        stream.set_nodelay(true).map_err(ClientError::Connect)?;
        let mut conn = Framed::with_capacity(stream, TerminalCodec::new(Side::Terminal), CONNECTION_BUF_BYTES);
        let terminal_nonce: [u8; 16] = rand::random();
        let hello = Hello {
            terminal_id,
            terminal_nonce,
            terminal_time_ms: now_ms(),
        };
        conn.send((1, Message::Hello(hello))).await?;
        let challenge = match recv(&mut conn).await?.message {
            Message::Challenge(c) => c,
            other => return Err(ClientError::Unexpected(Box::new(other))),
        };
        let input = SignOnInput {
            terminal_id,
            terminal_nonce,
            gateway_nonce: challenge.gateway_nonce,
        };
        conn.send((
            2,
            Message::Proof(Proof {
                proof: input.proof(secret),
            }),
        ))
        .await?;
        // The answer to a good proof is MACed under the new session key.
        conn.codec_mut().install_session(input.session_keys(secret));
        let sign_on = match recv(&mut conn).await {
            Ok(Frame {
                message: Message::SignOnOk(ok),
                ..
            }) => ok,
            Err(e) => return Err(e),
            Ok(other) => return Err(ClientError::Unexpected(Box::new(other.message))),
        };
        let offline_limits = if sign_on.flags & SIGN_ON_OFFLINE_LIMITS != 0 {
            match recv(&mut conn).await?.message {
                Message::OfflineLimits(l) => Some(l),
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        } else {
            None
        };
        Ok(TerminalClient {
            conn,
            terminal_id,
            sign_on,
            next_request_id: 3,
            pushed_version: None,
            door_pushed_version: None,
            blacklist: Default::default(),
            blacklist_version: 0,
            offline_limits,
            secret: *secret,
        })
    }

    /// Sends a request without waiting; returns its request id.
    pub async fn send(&mut self, message: Message) -> Result<u32, ClientError> {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.conn.send((id, message)).await?;
        Ok(id)
    }

    /// Queues a request without flushing (for pipelining several); see `flush`.
    pub async fn feed(&mut self, message: Message) -> Result<u32, ClientError> {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        self.conn.feed((id, message)).await?;
        Ok(id)
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        Ok(self.conn.flush().await?)
    }

    /// The next frame from the gateway.
    pub async fn recv(&mut self) -> Result<Frame, ClientError> {
        recv(&mut self.conn).await
    }

    /// The next frame that is not a BLACKLIST_PUSH or a DOOR_CACHE_PUSH (those are
    /// noted in `pushed_version` and `door_pushed_version`).
    pub async fn recv_answer(&mut self) -> Result<Frame, ClientError> {
        loop {
            let frame = recv(&mut self.conn).await?;
            match frame.message {
                Message::BlacklistPush(p) if frame.request_id == 0 => {
                    self.pushed_version = Some(self.pushed_version.unwrap_or(0).max(p.version));
                }
                Message::DoorCachePush(p) if frame.request_id == 0 => {
                    self.door_pushed_version = Some(self.door_pushed_version.unwrap_or(0).max(p.version));
                }
                _ => return Ok(frame),
            }
        }
    }

    /// One DOOR_CACHE_SYNC and the run that answers it: its schedules, holidays and
    /// pages in order, the last a page with `LAST_IN_RUN` (docs/PROTOCOL.md 11.3).
    pub async fn door_cache_run(&mut self, sync: DoorCacheSync) -> Result<Vec<Message>, ClientError> {
        let id = self.send(Message::DoorCacheSync(sync)).await?;
        let mut run = Vec::new();
        loop {
            let frame = self.recv_answer().await?;
            if frame.request_id != id {
                return Err(ClientError::Unexpected(Box::new(frame.message)));
            }
            let last = frame
                .message
                .door_page_flags()
                .is_some_and(|f| f & DOOR_PAGE_LAST_IN_RUN != 0);
            match frame.message {
                Message::DoorSchedule(_)
                | Message::DoorHolidays(_)
                | Message::DoorCachePage(_)
                | Message::DoorCacheBulk(_) => run.push(frame.message),
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
            if last {
                return Ok(run);
            }
        }
    }

    /// Waits for a BLACKLIST_PUSH announcing a version above `above`; returns it.
    pub async fn wait_push(&mut self, above: u64) -> Result<u64, ClientError> {
        loop {
            if let Some(v) = self.pushed_version.filter(|v| *v > above) {
                return Ok(v);
            }
            let frame = recv(&mut self.conn).await?;
            match frame.message {
                Message::BlacklistPush(p) => {
                    self.pushed_version = Some(self.pushed_version.unwrap_or(0).max(p.version));
                }
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
    }

    /// Sends a request and waits for its answer.
    pub async fn request(&mut self, message: Message) -> Result<Message, ClientError> {
        let id = self.send(message).await?;
        let frame = self.recv_answer().await?;
        if frame.request_id != id {
            return Err(ClientError::Unexpected(Box::new(frame.message)));
        }
        Ok(frame.message)
    }

    /// One BLACKLIST_SYNC and the run of pages that answers it.
    pub async fn blacklist_sync_run(
        &mut self,
        since_version: u64,
        after_card: u64,
    ) -> Result<Vec<BlacklistPage>, ClientError> {
        let id = self
            .send(Message::BlacklistSync(BlacklistSync {
                since_version,
                after_card,
            }))
            .await?;
        let mut pages = Vec::new();
        loop {
            let frame = self.recv_answer().await?;
            match frame.message {
                Message::BlacklistPage(p) if frame.request_id == id => {
                    pages.push(p);
                    if p.has(BLACKLIST_PAGE_LAST_IN_RUN) {
                        return Ok(pages);
                    }
                }
                other => return Err(ClientError::Unexpected(Box::new(other))),
            }
        }
    }

    /// Brings `blacklist` and `blacklist_version` up to date with the gateway, following
    /// the protocol (delta when possible, full list otherwise), then acknowledges the
    /// version. Returns the number of pages read.
    pub async fn blacklist_sync(&mut self) -> Result<usize, ClientError> {
        let mut after = 0;
        let mut full_version = None;
        let mut pages_read = 0;
        loop {
            let pages = self.blacklist_sync_run(self.blacklist_version, after).await?;
            pages_read += pages.len();
            let last = *pages.last().expect("a run has a page");
            for p in &pages {
                match p.kind {
                    BlacklistPageKind::Delta => {
                        self.blacklist.extend(p.added_cards());
                        for c in p.removed_cards() {
                            self.blacklist.remove(c);
                        }
                        self.blacklist_version = p.to_version;
                    }
                    BlacklistPageKind::Full => {
                        if p.has(BLACKLIST_PAGE_FIRST) {
                            self.blacklist.clear();
                            full_version = Some(p.to_version);
                        }
                        self.blacklist.extend(p.added_cards());
                        after = p.next_after_card;
                    }
                }
            }
            if last.has(BLACKLIST_PAGE_MORE) {
                if last.kind == BlacklistPageKind::Delta {
                    after = 0;
                }
                continue;
            }
            match full_version.take() {
                // A full list is as of the version it started at; catch up from there.
                Some(v) => {
                    self.blacklist_version = v;
                    after = 0;
                }
                None => break,
            }
        }
        self.send(Message::BlacklistAck(BlacklistAck {
            version: self.blacklist_version,
        }))
        .await?;
        Ok(pages_read)
    }

    pub async fn request_timeout(&mut self, message: Message, limit: Duration) -> Result<Message, ClientError> {
        tokio::time::timeout(limit, self.request(message))
            .await
            .map_err(|_| ClientError::Timeout(limit))?
    }

    pub async fn purchase(&mut self, tx_seq: u64, card: CardNo, amount_fen: i64) -> Result<Message, ClientError> {
        self.request(Message::Purchase(Purchase {
            tx_seq,
            card,
            amount_fen,
            terminal_time_ms: now_ms(),
        }))
        .await
    }

    pub async fn reversal(
        &mut self,
        tx_seq: u64,
        original_tx_seq: u64,
        card: CardNo,
        amount_fen: i64,
    ) -> Result<Message, ClientError> {
        self.request(Message::Reversal(Reversal {
            tx_seq,
            original_tx_seq,
            card,
            amount_fen,
            terminal_time_ms: now_ms(),
        }))
        .await
    }

    /// A sale made offline, MACed under this terminal's key as a terminal stores it.
    pub fn offline_sale(&self, tx_seq: u64, card: CardNo, amount_fen: i64, sale_time_ms: i64) -> OfflineSale {
        OfflineSale {
            tx_seq,
            card,
            amount_fen,
            sale_time_ms,
            mac: cardgate_codec::crypto::offline_sale_mac(
                &self.secret,
                self.terminal_id,
                tx_seq,
                card.0,
                amount_fen,
                sale_time_ms,
            ),
        }
    }

    /// ACCESS_CHECK at `door` now, and its ACCESS_RESULT.
    pub async fn access_check(
        &mut self,
        event_seq: u64,
        card: CardNo,
        door: u32,
        direction: Direction,
    ) -> Result<AccessResult, ClientError> {
        let m = self
            .request(Message::AccessCheck(AccessCheck {
                event_seq,
                card,
                door,
                direction,
                controller_time_ms: now_ms(),
            }))
            .await?;
        match m {
            Message::AccessResult(r) => Ok(r),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// PUNCH now, and its PUNCH_RESULT.
    pub async fn punch(&mut self, event_seq: u64, card: CardNo) -> Result<PunchResult, ClientError> {
        let m = self
            .request(Message::Punch(Punch {
                event_seq,
                card,
                controller_time_ms: now_ms(),
            }))
            .await?;
        match m {
            Message::PunchResult(r) => Ok(r),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Brings `cache` up to date with the gateway run by run, as docs/PROTOCOL.md 11.3
    /// says, acknowledging every version it switches to. Returns (runs, pages) read.
    pub async fn door_sync(&mut self, cache: &mut DoorCache) -> Result<(u64, u64), DoorSyncError> {
        let mut runs = 0;
        let mut pages = 0;
        let mut broken = 0;
        while runs < DOOR_SYNC_RUNS_MAX {
            let run = self.door_cache_run(cache.next_sync()).await?;
            runs += 1;
            pages += run.iter().filter(|m| m.door_page_flags().is_some()).count() as u64;
            match cache.apply_run(&run) {
                Ok(out) => {
                    if let Some(version) = out.ack {
                        self.send(Message::DoorCacheAck(DoorCacheAck { version })).await?;
                    }
                    if !out.again {
                        return Ok((runs, pages));
                    }
                }
                // Dropped whole; the next run starts again from the version held.
                Err(e) => {
                    broken += 1;
                    if broken >= DOOR_SYNC_BROKEN_MAX {
                        return Err(DoorSyncError::Cache(e));
                    }
                }
            }
        }
        Err(DoorSyncError::NoEnd)
    }

    /// A decision a door controller made offline, MACed under its key as it stores it.
    pub fn door_event(
        &self,
        event_seq: u64,
        card: CardNo,
        door: u32,
        direction: Direction,
        reason: AccessReason,
        event_time_ms: i64,
    ) -> DoorEvent {
        let mut event = DoorEvent {
            event_seq,
            card,
            door,
            direction,
            reason,
            event_time_ms,
            mac: [0; 16],
        };
        let fields = cardgate_codec::crypto::DoorEventFields::of(self.terminal_id, &event);
        event.mac = cardgate_codec::crypto::door_event_mac(&self.secret, &fields);
        event
    }

    /// Uploads `events` as one batch (DOOR_EVENTS_BATCH, then each DOOR_EVENT) and
    /// waits for its DOOR_EVENTS_RESULT.
    pub async fn upload_door_events(&mut self, events: &[DoorEvent]) -> Result<DoorEventsResult, ClientError> {
        let batch = DoorEventsBatch {
            first_event_seq: events.first().map_or(0, |e| e.event_seq),
            count: u16::try_from(events.len()).unwrap_or(u16::MAX),
        };
        let id = self.feed(Message::DoorEventsBatch(batch)).await?;
        for e in events {
            self.feed(Message::DoorEvent(*e)).await?;
        }
        self.flush().await?;
        let frame = self.recv_answer().await?;
        match frame.message {
            Message::DoorEventsResult(r) if frame.request_id == id => Ok(r),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    /// Uploads `sales` as one batch (OFFLINE_BATCH, then each OFFLINE_SALE) and waits
    /// for its OFFLINE_RESULT.
    pub async fn upload(&mut self, sales: &[OfflineSale]) -> Result<OfflineResult, ClientError> {
        let batch = OfflineBatch {
            first_tx_seq: sales.first().map_or(0, |s| s.tx_seq),
            count: u16::try_from(sales.len()).unwrap_or(u16::MAX),
        };
        let id = self.feed(Message::OfflineBatch(batch)).await?;
        for s in sales {
            self.feed(Message::OfflineSale(*s)).await?;
        }
        self.flush().await?;
        let frame = self.recv_answer().await?;
        match frame.message {
            Message::OfflineResult(r) if frame.request_id == id => Ok(r),
            other => Err(ClientError::Unexpected(Box::new(other))),
        }
    }

    pub async fn balance(&mut self, card: CardNo) -> Result<Message, ClientError> {
        self.request(Message::BalanceInquiry(BalanceInquiry { card })).await
    }

    pub async fn heartbeat(&mut self) -> Result<Message, ClientError> {
        self.request(Message::Heartbeat(Heartbeat {
            terminal_time_ms: now_ms(),
            blacklist_version: self.sign_on.blacklist_version,
        }))
        .await
    }

    /// Ends the connection from this side, as a terminal that lost the gateway would
    /// stop talking, and waits (at most `limit`) until the gateway has closed its end,
    /// so that it has seen the terminal go before the terminal signs on again.
    pub async fn hang_up(&mut self, limit: Duration) {
        use tokio::io::AsyncWriteExt;
        let _ = self.conn.get_mut().shutdown().await;
        let _ = tokio::time::timeout(limit, async { while recv(&mut self.conn).await.is_ok() {} }).await;
    }

    /// The request id the next `send` or `feed` will use.
    pub fn next_request_id(&self) -> u32 {
        self.next_request_id
    }

    /// The underlying framed stream, for tests that write raw bytes.
    pub fn framed_mut(&mut self) -> &mut Framed<TcpStream, TerminalCodec> {
        &mut self.conn
    }
}

/// A TCP connection to `addr`, bound to `source` first when one is given.
pub async fn connect_stream(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(source) = source else {
        return TcpStream::connect(addr).await;
    };
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

async fn recv(conn: &mut Framed<TcpStream, TerminalCodec>) -> Result<Frame, ClientError> {
    match conn.next().await {
        Some(Ok(Frame {
            message: Message::Error(e),
            ..
        })) => Err(ClientError::Refused(e.code)),
        Some(Ok(frame)) => Ok(frame),
        Some(Err(e)) => Err(e.into()),
        None => Err(ClientError::Closed),
    }
}
