//! The `/ws` connections of this node by user, so that the server API can reach them
//! (disconnect a user, subscribe all of a user's connections to a channel...): each entry
//! is the client id, the sender of the connection's outbox (to wake its task) and the
//! [`Order`]s it has not taken yet.
//!
//! Only connections with a user (a verified token) are listed: the API addresses users,
//! and an anonymous connection costs nothing here. A connection is listed from the moment
//! its identity is known (at the upgrade, or at its `connect`) until it ends. The orders are
//! kept here, not in the outbox, whose size counts in every idle connection.

use crate::lock;
use crate::node::{Order, OutboxSender};
use std::collections::HashMap;
use std::sync::Mutex;

/// This node's connections by user.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    users: Mutex<HashMap<Box<str>, Vec<Entry>>>,
}

#[derive(Debug)]
struct Entry {
    client: Box<str>,
    outbox: OutboxSender,
    orders: Vec<Order>,
}

impl Sessions {
    /// Lists connection `client` of `user`.
    pub(crate) fn add(&self, user: &str, client: &str, outbox: OutboxSender) {
        let mut users = lock(&self.users);
        let entries = users.entry(Box::from(user)).or_default();
        entries.retain(|e| &*e.client != client && !e.outbox.is_closed());
        entries.push(Entry {
            client: Box::from(client),
            outbox,
            orders: Vec::new(),
        });
    }

    /// Takes connection `client` of `user` off the list.
    pub(crate) fn remove(&self, user: &str, client: &str) {
        let mut users = lock(&self.users);
        if let Some(entries) = users.get_mut(user) {
            entries.retain(|e| &*e.client != client);
            if entries.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Gives `order` to the connections of `user` (only `client`, when given) and wakes
    /// them; how many got it.
    pub(crate) fn order(&self, user: &str, client: Option<&str>, order: &Order) -> usize {
        let mut users = lock(&self.users);
        let Some(entries) = users.get_mut(user) else {
            return 0;
        };
        let mut given = 0;
        for e in entries
            .iter_mut()
            .filter(|e| client.is_none_or(|c| &*e.client == c))
        {
            if e.outbox.notify_orders() {
                e.orders.push(order.clone());
                given += 1;
            }
        }
        given
    }

    /// The orders of connection `client` of `user`, oldest first, taken.
    pub(crate) fn take(&self, user: &str, client: &str) -> Vec<Order> {
        let mut users = lock(&self.users);
        users
            .get_mut(user)
            .and_then(|entries| entries.iter_mut().find(|e| &*e.client == client))
            .map(|e| std::mem::take(&mut e.orders))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Outbox;

    #[test]
    fn orders_reach_a_users_connections() {
        let s = Sessions::default();
        let (a, b, c) = (Outbox::new(4), Outbox::new(4), Outbox::new(4));
        s.add("ann", "c1", a.sender());
        s.add("ann", "c2", b.sender());
        s.add("bob", "c3", c.sender());
        let bye = Order::Disconnect {
            code: 4500,
            reason: "bye".into(),
        };
        assert_eq!(s.order("ann", None, &bye), 2);
        assert_eq!(s.take("ann", "c1"), vec![bye.clone()]);
        assert_eq!(s.take("ann", "c2"), vec![bye.clone()]);
        assert!(s.take("ann", "c2").is_empty());
        assert!(s.take("bob", "c3").is_empty());
        assert_eq!(s.order("ann", Some("c2"), &bye), 1);
        assert!(s.take("ann", "c1").is_empty());
        assert_eq!(s.take("ann", "c2"), vec![bye.clone()]);
        assert_eq!(s.order("nobody", None, &bye), 0);
        s.remove("ann", "c1");
        s.remove("ann", "c2");
        assert_eq!(s.order("ann", None, &bye), 0);
        // A connection that ended without being taken off gets nothing.
        drop(c);
        assert_eq!(s.order("bob", None, &bye), 0);
    }
}
