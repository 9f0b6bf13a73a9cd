//! Raw rooms: named groups of WebSocket connections, each member an [`OutboxSender`].
//!
//! A message is framed (and, for members without server context takeover, compressed) once
//! as a prepared message and pushed into the outbox of every other member, from where the
//! hub's deliverer writes it straight into the member's socket. A room is a map entry and a
//! vector of its members: memory follows the members, nothing is preallocated per room. A
//! member whose outbox overflows (`rooms.buffer` messages, or `send_buffer` bytes) is a
//! slow consumer and is disconnected (close 4000, as on `/ws`), so it can never slow the
//! others or grow the server's memory.

use crate::lock;
use crate::node::OutboxSender;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tidewire::PreparedMessage;

/// All rooms of a server.
#[derive(Debug)]
pub struct Rooms {
    rooms: Mutex<HashMap<String, Arc<Room>>>,
    capacity: usize,
}

/// One room: its members, by connection id.
#[derive(Debug, Default)]
pub(crate) struct Room {
    members: Mutex<Vec<(u64, OutboxSender)>>,
}

impl Rooms {
    /// Rooms whose members may fall at most `capacity` messages behind.
    pub fn new(capacity: usize) -> Self {
        Rooms {
            rooms: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// Messages a member may fall behind before it is a slow consumer.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Adds connection `id`, delivering into `outbox`, to `room` (created if needed):
    /// everything sent to the room from now on reaches it.
    pub(crate) fn join(&self, room: &str, id: u64, outbox: OutboxSender) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        let r = rooms.entry(room.to_owned()).or_default().clone();
        lock(&r.members).push((id, outbox));
        r
    }

    /// Removes connection `id` from `room`, and forgets the room if nobody is left in it.
    pub(crate) fn leave(&self, room: &str, id: u64) {
        let mut rooms = lock(&self.rooms);
        let Some(r) = rooms.get(room) else {
            return;
        };
        let mut members = lock(&r.members);
        members.retain(|(m, _)| *m != id);
        if members.is_empty() {
            drop(members);
            rooms.remove(room);
        }
    }

    /// Number of rooms with at least one member.
    pub fn len(&self) -> usize {
        lock(&self.rooms).len()
    }

    /// True when no room exists.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Room {
    /// Delivers `msg` from member `from` to every member, `from` too if `echo`. Never
    /// waits: a member that cannot take it is a slow consumer.
    pub(crate) fn send(&self, from: u64, echo: bool, msg: &Arc<PreparedMessage>) {
        for (id, outbox) in lock(&self.members).iter() {
            if *id != from || echo {
                outbox.push_frame(msg.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Outbox;

    #[test]
    fn members_receive_and_empty_rooms_disappear() {
        let rooms = Rooms::new(4);
        let (a, b) = (Outbox::new(4), Outbox::new(4));
        let room = rooms.join("lobby", 1, a.sender());
        rooms.join("lobby", 2, b.sender());
        let msg = Arc::new(PreparedMessage::new(tidewire::Message::text("hi")).unwrap());
        room.send(1, false, &msg);
        assert_eq!(a.len(), 0, "not to its sender");
        assert_eq!(b.len(), 1);
        room.send(1, true, &msg);
        assert_eq!((a.len(), b.len()), (1, 2));
        rooms.leave("lobby", 1);
        assert_eq!(rooms.len(), 1);
        rooms.leave("lobby", 2);
        assert!(rooms.is_empty());
    }
}
