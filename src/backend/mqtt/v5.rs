//! What MQTT 5 adds to the backend's publishes, per topic (docs/CONTRACT.md §9): the property
//! block of its publishes (content type, payload format, message expiry, the user properties
//! `host`, `appId`, `service`), built once per topic and shared, and its topic alias on the
//! current connection.
//!
//! Aliases are assigned to topics as they are first used on a connection, up to the broker's
//! topic alias maximum, and forgotten at every new connection ([`Topics::connected`]): the first
//! publish of a topic on a connection carries the topic and its alias ([`Alias::Set`]), the later
//! ones the alias alone ([`Alias::Use`]). A publish that set an alias and was then not written
//! gives the alias back to be set again ([`Topics::unwritten`]), so no publish ever carries an
//! alias its connection does not know.
//!
//! Pure state: no I/O, no clock. The session asks it for each publish at MQTT 5 only; at 3.1.1 it
//! is never touched.

use std::collections::HashMap;
use std::sync::Arc;

use super::wire::{Alias, Props};

/// The content type of every payload: a message, a batch, the status.
const CONTENT_TYPE: &str = "application/json";
/// Topics whose properties are kept; past it the table starts again (a host whose containers
/// come and go for months must not grow it for ever).
const MAX_TOPICS: usize = 4096;

/// Whom a topic's messages are about, for its user properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// One service of one app: `host`, `appId`, `service`.
    Service { app: String, service: String },
    /// The agent itself, or lifecycle events of every container (`system`, `manager` topics):
    /// `host` only.
    Agent,
}

/// A topic's properties, and its alias on the current connection.
struct Entry {
    props: Arc<Props>,
    /// 0: none yet on connection `alias_conn`.
    alias: u16,
    /// The connection (counted by [`Topics::connected`]) `alias` belongs to.
    alias_conn: u64,
    /// A publish carrying the topic with the alias was handed out on that connection.
    alias_set: bool,
}

/// See the module documentation.
pub struct Topics {
    host: String,
    expiry: Option<u32>,
    index: HashMap<Arc<str>, usize>,
    entries: Vec<Entry>,
    /// The topic asked for last and its entry: consecutive publishes mostly share a topic.
    last: Option<(Arc<str>, usize)>,
    /// The current connection's number and topic alias maximum.
    conn: u64,
    alias_max: u16,
    /// The next alias to assign on this connection.
    next_alias: u16,
}

impl Topics {
    /// Properties for messages of `host`; message expiry after `expiry` seconds (none: never).
    pub fn new(host: &str, expiry: Option<u32>) -> Topics {
        Topics {
            host: host.to_string(),
            expiry,
            index: HashMap::new(),
            entries: Vec::new(),
            last: None,
            // Entries start with connection 0: none of theirs is ever the current one.
            conn: 1,
            alias_max: 0,
            next_alias: 1,
        }
    }

    /// A new connection, whose broker takes aliases up to `alias_max` (0: none): every alias
    /// of the last one is forgotten.
    pub fn connected(&mut self, alias_max: u16) {
        self.conn += 1;
        self.alias_max = alias_max;
        self.next_alias = 1;
    }

    /// The properties and alias of the next publish on `topic`; `who` is asked only for a
    /// topic not seen before.
    pub fn publish(&mut self, topic: &Arc<str>, who: impl FnOnce() -> Who) -> (Arc<Props>, Alias) {
        let i = self.entry(topic, who);
        let (conn, alias_max) = (self.conn, self.alias_max);
        let e = &mut self.entries[i];
        if e.alias_conn != conn {
            if alias_max == 0 || self.next_alias > alias_max {
                return (e.props.clone(), Alias::None);
            }
            e.alias = self.next_alias;
            e.alias_conn = conn;
            self.next_alias += 1;
            e.alias_set = false;
        }
        if e.alias_set {
            (e.props.clone(), Alias::Use(e.alias))
        } else {
            e.alias_set = true;
            (e.props.clone(), Alias::Set(e.alias))
        }
    }

    /// A publish on `topic` that carried [`Alias::Set`] was not written: the next one sets the
    /// alias again.
    pub fn unwritten(&mut self, topic: &str) {
        if let Some(&i) = self.index.get(topic) {
            if self.entries[i].alias_conn == self.conn {
                self.entries[i].alias_set = false;
            }
        }
    }

    fn entry(&mut self, topic: &Arc<str>, who: impl FnOnce() -> Who) -> usize {
        if let Some((t, i)) = &self.last {
            if Arc::ptr_eq(t, topic) {
                return *i;
            }
        }
        let i = match self.index.get(topic) {
            Some(&i) => i,
            None => {
                if self.entries.len() >= MAX_TOPICS {
                    self.index.clear();
                    self.entries.clear();
                }
                self.entries.push(Entry {
                    props: Arc::new(props(&self.host, self.expiry, who())),
                    alias: 0,
                    alias_conn: 0,
                    alias_set: false,
                });
                let i = self.entries.len() - 1;
                self.index.insert(topic.clone(), i);
                i
            }
        };
        self.last = Some((topic.clone(), i));
        i
    }
}

/// The properties of the publishes about `who`.
pub fn props(host: &str, expiry: Option<u32>, who: Who) -> Props {
    let mut user = vec![("host".to_string(), host.to_string())];
    if let Who::Service { app, service } = who {
        user.push(("appId".to_string(), app));
        user.push(("service".to_string(), service));
    }
    Props::new(CONTENT_TYPE, true, expiry, user).unwrap_or_else(|_| bare(expiry))
}

/// The properties of the retained status and the last will: `host` only, and no expiry (a
/// retained status must not vanish while the agent is away).
pub fn status_props(host: &str) -> Props {
    props(host, None, Who::Agent)
}

/// Properties without user properties, for names longer than MQTT carries.
fn bare(expiry: Option<u32>) -> Props {
    // A 16-byte content type and no user properties always fit; the default (no properties)
    // keeps this total.
    Props::new(CONTENT_TYPE, true, expiry, Vec::new()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Who {
        Who::Service {
            app: "1001".into(),
            service: "web".into(),
        }
    }

    #[test]
    fn aliases_are_set_once_per_connection_and_forgotten_at_the_next() {
        let mut t = Topics::new("pi", None);
        let a: Arc<str> = Arc::from("logs/1001/web/info");
        let b: Arc<str> = Arc::from("logs/1001/web/error");
        let c: Arc<str> = Arc::from("logs/system/info");
        assert_eq!(t.publish(&a, service).1, Alias::None, "not connected yet");
        t.connected(2);
        let seq: Vec<Alias> = [&a, &a, &b, &c, &b, &a, &c]
            .iter()
            .map(|x| t.publish(x, || Who::Agent).1)
            .collect();
        assert_eq!(
            seq,
            [
                Alias::Set(1),
                Alias::Use(1),
                Alias::Set(2),
                Alias::None,
                Alias::Use(2),
                Alias::Use(1),
                Alias::None
            ],
            "two aliases allowed: the third topic goes without"
        );
        t.connected(2);
        let copy: Arc<str> = Arc::from("logs/1001/web/error");
        assert_eq!(
            t.publish(&copy, service).1,
            Alias::Set(1),
            "a new connection"
        );
        assert_eq!(t.publish(&b, service).1, Alias::Use(1), "the same topic");
        t.unwritten(&b);
        assert_eq!(t.publish(&b, service).1, Alias::Set(1), "set again");
        t.connected(0);
        assert_eq!(t.publish(&b, service).1, Alias::None, "no aliases allowed");
    }

    #[test]
    fn properties_are_built_once_per_topic() {
        let mut t = Topics::new("pi", Some(60));
        let a: Arc<str> = Arc::from("logs/1001/web/info");
        let (p1, _) = t.publish(&a, service);
        let (p2, _) = t.publish(&Arc::from("logs/1001/web/info"), || {
            panic!("asked again for a known topic")
        });
        assert!(Arc::ptr_eq(&p1, &p2));
        let want = Props::new(
            "application/json",
            true,
            Some(60),
            vec![
                ("host".into(), "pi".into()),
                ("appId".into(), "1001".into()),
                ("service".into(), "web".into()),
            ],
        )
        .expect("props");
        assert_eq!(*p1, want);
        let status = Props::new(
            "application/json",
            true,
            None,
            vec![("host".into(), "pi".into())],
        )
        .expect("props");
        assert_eq!(status_props("pi"), status);
    }

    #[test]
    fn a_name_longer_than_mqtt_carries_leaves_the_user_properties_out() {
        let p = props(
            "pi",
            None,
            Who::Service {
                app: "a".repeat(70_000),
                service: "web".into(),
            },
        );
        assert_eq!(p, bare(None));
    }
}
