//! Raw rooms: named broadcast groups of WebSocket connections.
//!
//! Each room is a bounded `tokio::sync::broadcast` channel of prepared messages: a message
//! is framed (and, for members without server context takeover, compressed) once, and every
//! member's task queues the same `Bytes` on its socket. A member that falls more than
//! `capacity` messages behind is a slow consumer and is disconnected (close 1008 with the
//! reason), so it can never slow the others or grow the server's memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tidewire::PreparedMessage;
use tokio::sync::broadcast;

/// A message in a room, with the connection id of its sender.
pub type RoomMessage = (u64, Arc<PreparedMessage>);

/// All rooms of a server.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, broadcast::Sender<RoomMessage>>>,
    capacity: usize,
}

impl Rooms {
    /// Rooms whose members may fall at most `capacity` messages behind.
    pub fn new(capacity: usize) -> Self {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Joins `room`, creating it if needed: returns the sender to publish with and a
    /// receiver of everything published from now on.
    pub fn join(
        &self,
        room: &str,
    ) -> (
        broadcast::Sender<RoomMessage>,
        broadcast::Receiver<RoomMessage>,
    ) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        let tx = rooms
            .entry(room.to_owned())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .clone();
        let rx = tx.subscribe();
        (tx, rx)
    }

    /// Forgets `room` if nobody is in it any more.
    pub fn leave(&self, room: &str) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|e| e.into_inner());
        if rooms.get(room).is_some_and(|tx| tx.receiver_count() == 0) {
            rooms.remove(room);
        }
    }

    /// Number of rooms with at least one member.
    pub fn len(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no room exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn members_receive_and_empty_rooms_disappear() {
        let rooms = Rooms::new(4);
        let (tx, mut a) = rooms.join("lobby");
        let (_, mut b) = rooms.join("lobby");
        let msg = Arc::new(PreparedMessage::new(tidewire::Message::text("hi")).unwrap());
        tx.send((1, msg)).unwrap();
        assert_eq!(a.recv().await.unwrap().1.payload().as_ref(), b"hi");
        assert_eq!(b.recv().await.unwrap().1.payload().as_ref(), b"hi");
        drop((a, b));
        rooms.leave("lobby");
        assert!(rooms.is_empty());
    }
}
