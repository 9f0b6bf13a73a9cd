//! Namespaces: a channel `ns:rest` belongs to namespace `ns`, a channel without a colon to
//! the default namespace; each namespace says what its channels keep and allow.

use crate::engine::{Error, ErrorKind, StreamOptions, MAX_CHANNEL_LEN};
use std::collections::BTreeMap;
use std::time::Duration;

/// Behaviour of the channels of one namespace.
///
/// `Default` gives the default namespace's values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NamespaceOptions {
    /// Publications kept per channel. Default 1,000; 0 keeps none (no recovery beyond the
    /// current position). The oldest go first.
    pub history_size: usize,
    /// How long a publication stays in history. Default 10 minutes. Trimmed lazily, when
    /// the channel is next used or swept.
    pub history_ttl: Duration,
    /// Track who is subscribed and send join/leave events. Default false (every
    /// subscribe and unsubscribe would be an event for all subscribers).
    pub presence: bool,
    /// Clients may publish (the server always may). Default true. Checked by the
    /// connection layer, not by the engine.
    pub publish: bool,
    /// Subscribing needs a channel token. Default false. Checked by the connection layer.
    pub private: bool,
    /// Ask the backend (`backend.url`) before each client subscribe. Default false.
    pub subscribe_proxy: bool,
    /// Ask the backend before each client publication (it may allow, deny or rewrite the
    /// data). Default false.
    pub publish_proxy: bool,
    /// Forward `rpc` requests whose method is in this namespace to the backend. Default
    /// false (error 104).
    pub rpc_proxy: bool,
}

impl Default for NamespaceOptions {
    fn default() -> Self {
        NamespaceOptions {
            history_size: 1000,
            history_ttl: Duration::from_secs(600),
            presence: false,
            publish: true,
            private: false,
            subscribe_proxy: false,
            publish_proxy: false,
            rpc_proxy: false,
        }
    }
}

impl NamespaceOptions {
    /// See [`NamespaceOptions::history_size`].
    pub fn history_size(mut self, n: usize) -> Self {
        self.history_size = n;
        self
    }

    /// See [`NamespaceOptions::history_ttl`].
    pub fn history_ttl(mut self, ttl: Duration) -> Self {
        self.history_ttl = ttl;
        self
    }

    /// See [`NamespaceOptions::presence`].
    pub fn presence(mut self, on: bool) -> Self {
        self.presence = on;
        self
    }

    /// See [`NamespaceOptions::publish`].
    pub fn publish(mut self, on: bool) -> Self {
        self.publish = on;
        self
    }

    /// See [`NamespaceOptions::private`].
    pub fn private(mut self, on: bool) -> Self {
        self.private = on;
        self
    }
}

/// The namespaces of a hub: a channel `ns:rest` belongs to namespace `ns`, a channel
/// without a colon to the default namespace.
#[derive(Debug, Clone, Default)]
pub struct NamespaceConfig {
    default: NamespaceOptions,
    namespaces: BTreeMap<String, NamespaceOptions>,
}

impl NamespaceConfig {
    /// Only the default namespace, with default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the default namespace's options.
    pub fn default_namespace(mut self, options: NamespaceOptions) -> Self {
        self.default = options;
        self
    }

    /// Adds (or replaces) namespace `name`.
    pub fn namespace(mut self, name: impl Into<String>, options: NamespaceOptions) -> Self {
        self.namespaces.insert(name.into(), options);
        self
    }

    /// The options of `channel`'s namespace; `None` when the namespace is not configured
    /// (such channels do not exist).
    pub fn for_channel(&self, channel: &str) -> Option<&NamespaceOptions> {
        match namespace_of(channel) {
            None => Some(&self.default),
            Some(ns) => self.namespaces.get(ns),
        }
    }

    /// The options of namespace `name` (not the default one), if configured.
    pub fn namespace_options(&self, name: &str) -> Option<&NamespaceOptions> {
        self.namespaces.get(name)
    }

    /// Every namespace: `("", default)` first, then the named ones.
    pub fn all(&self) -> impl Iterator<Item = (&str, &NamespaceOptions)> {
        std::iter::once(("", &self.default))
            .chain(self.namespaces.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// Checks the channel name and finds its options.
    pub fn check(&self, channel: &str) -> Result<&NamespaceOptions, Error> {
        // `$...` names are the hub's own (its control messages).
        if channel.is_empty() || channel.len() > MAX_CHANNEL_LEN || channel.starts_with('$') {
            return Err(Error::new(ErrorKind::InvalidChannel));
        }
        self.for_channel(channel)
            .ok_or(Error::new(ErrorKind::UnknownNamespace))
    }
}

/// The namespace of `channel`: the part before the first colon, `None` without one.
pub fn namespace_of(channel: &str) -> Option<&str> {
    channel.split_once(':').map(|(ns, _)| ns)
}

impl NamespaceOptions {
    /// What the broker keeps of a channel of this namespace.
    pub fn stream(&self) -> StreamOptions {
        StreamOptions {
            history_size: self.history_size,
            history_ttl: self.history_ttl,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_lookup() {
        let chat = NamespaceOptions::default().presence(true).history_size(50);
        let config = NamespaceConfig::new().namespace("chat", chat.clone());
        assert_eq!(namespace_of("news"), None);
        assert_eq!(namespace_of("chat:room:1"), Some("chat"));
        assert_eq!(
            config.for_channel("news"),
            Some(&NamespaceOptions::default())
        );
        assert_eq!(config.for_channel("chat:lobby"), Some(&chat));
        assert_eq!(config.for_channel("other:lobby"), None);
        assert!(config.check("").unwrap_err().is_invalid_channel());
        assert!(config
            .check(&"x".repeat(MAX_CHANNEL_LEN + 1))
            .unwrap_err()
            .is_invalid_channel());
        assert!(config.check("other:x").unwrap_err().is_unknown_namespace());
    }

    #[test]
    fn default_namespace_values() {
        let d = NamespaceOptions::default();
        assert_eq!(d.history_size, 1000);
        assert_eq!(d.history_ttl, Duration::from_secs(600));
        assert!(d.publish && !d.presence && !d.private);
        assert_eq!(d.stream().history_size, 1000);
    }
}
