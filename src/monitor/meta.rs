//! Who a container is, in our terms: labels → `appId`, `serviceName`, `serviceId` (docs/CONTRACT.md §3),
//! whether we follow it at all, and which container is our own.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::Config;
use crate::message::{LabelValue, Origin};

/// Containers with this label set to `true` are never followed.
pub const IGNORE_LABEL: &str = "container-logd.ignore";

/// The origin of a container's messages.
pub fn origin(
    cfg: &Config,
    host: &Arc<str>,
    id: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> Origin {
    let first = |keys: &[String]| {
        keys.iter()
            .find_map(|k| labels.get(k).filter(|v| !v.is_empty()))
            .cloned()
    };
    Origin::new(
        Arc::from(id),
        name.trim_start_matches('/').to_string(),
        LabelValue::from_label(&first(&cfg.app_id_labels).unwrap_or_else(|| "standalone".into())),
        first(&cfg.service_name_labels).unwrap_or_else(|| name.trim_start_matches('/').to_string()),
        first(&cfg.service_id_labels).map(|v| LabelValue::from_label(&v)),
        host.clone(),
    )
}

/// Whether a container is followed: name patterns, the ignore label, never ourselves.
pub fn followed(
    cfg: &Config,
    own_id: Option<&str>,
    id: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    if own_id.is_some_and(|own| id.starts_with(own) || own.starts_with(id)) {
        return false;
    }
    if labels
        .get(IGNORE_LABEL)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        return false;
    }
    cfg.wants_container(name.trim_start_matches('/'))
}

/// The id of the container we run in, if any: found in `/proc/self/mountinfo` (the engine
/// bind-mounts `/etc/hostname` from `…/containers/<id>/`) or `/proc/self/cgroup`.
pub fn own_container_id() -> Option<String> {
    let in_file = |path: &str, find: fn(&str) -> Option<String>| {
        // A /proc file tells no size: read into room for a busy host's table at once, not
        // into a buffer doubled a dozen times.
        let mut text = String::with_capacity(128 << 10);
        let mut file = std::fs::File::open(path).ok()?;
        std::io::Read::read_to_string(&mut file, &mut text).ok()?;
        find(&text)
    };
    in_file("/proc/self/mountinfo", id_in_mountinfo)
        .or_else(|| in_file("/proc/self/cgroup", find_container_id))
}

/// The container id in the mount of `/etc/hostname`, the only mount that says which container
/// this is: a host's own table can list other containers' mounts (a shareable IPC namespace's
/// `…/containers/<id>/mounts/shm`), and on a busy host it is long (scanned with `memmem`).
fn id_in_mountinfo(text: &str) -> Option<String> {
    // Fields: id, parent, device, root, mount point, …
    let at = memchr::memmem::find(text.as_bytes(), b" /etc/hostname ")?;
    let start = text.get(..at)?.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..)?.lines().next()?;
    let mut fields = line.split(' ');
    let root = fields.nth(3)?;
    (fields.next()? == "/etc/hostname").then(|| find_container_id(root))?
}

/// The first 64-digit hex id after one of the engines' path or cgroup markers in `text`.
fn find_container_id(text: &str) -> Option<String> {
    for marker in ["/containers/", "/docker/", "docker-", "/libpod-"] {
        let mut rest = text;
        while let Some(i) = rest.find(marker) {
            let tail = &rest[i + marker.len()..];
            let id: String = tail.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
            if id.len() == 64 {
                return Some(id);
            }
            rest = tail;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn balena_and_compose_labels() {
        let cfg = Config::from_env(&HashMap::new()).expect("defaults");
        let host: Arc<str> = Arc::from("h");
        let b = origin(
            &cfg,
            &host,
            "abc",
            "/web_1_1",
            &labels(&[
                ("io.balena.app-id", "1001"),
                ("io.balena.service-name", "web"),
                ("io.balena.service-id", "7"),
            ]),
        );
        assert_eq!(b.app_id, LabelValue::Number("1001".into()));
        assert_eq!(b.service_name, "web");
        assert_eq!(b.service_id, Some(LabelValue::Number("7".into())));
        assert_eq!(b.name, "web_1_1");
        let c = origin(
            &cfg,
            &host,
            "abc",
            "shop-db-1",
            &labels(&[
                ("com.docker.compose.project", "shop"),
                ("com.docker.compose.service", "db"),
            ]),
        );
        assert_eq!(c.app_id, LabelValue::Text("shop".into()));
        assert_eq!(c.service_name, "db");
        assert_eq!(c.service_id, None);
        let s = origin(&cfg, &host, "abc", "/lonely", &labels(&[]));
        assert_eq!(s.app_id, LabelValue::Text("standalone".into()));
        assert_eq!(s.service_name, "lonely");
    }

    #[test]
    fn ignore_label_and_self() {
        let cfg = Config::from_env(&HashMap::new()).expect("defaults");
        assert!(followed(&cfg, None, "abc", "/x", &labels(&[])));
        assert!(!followed(
            &cfg,
            None,
            "abc",
            "/x",
            &labels(&[(IGNORE_LABEL, "true")])
        ));
        assert!(!followed(
            &cfg,
            Some("abcdef"),
            "abcdef",
            "/x",
            &labels(&[])
        ));
    }

    #[test]
    fn finds_own_id() {
        let id = "a".repeat(64);
        let other = "b".repeat(64);
        // A container's table: the other container's path is not this container.
        let mountinfo = format!(
            "600 1 0:40 / / rw - overlay overlay rw\n\
             611 600 0:49 /var/lib/docker/containers/{other}/mounts/shm /x/shm rw - tmpfs\n\
             612 600 0:50 /var/lib/docker/containers/{id}/hostname /etc/hostname rw - ext4\n"
        );
        assert_eq!(id_in_mountinfo(&mountinfo), Some(id.clone()));
        // A host's table lists every container's mounts, and none of them is the agent.
        let host = format!(
            "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
             611 25 0:49 / /var/lib/docker/containers/{other}/mounts/shm rw - tmpfs shm rw\n"
        );
        assert_eq!(id_in_mountinfo(&host), None);
        assert_eq!(
            find_container_id(&format!("0::/system.slice/docker-{id}.scope")),
            Some(id)
        );
        assert_eq!(find_container_id("0::/user.slice"), None);
    }
}
