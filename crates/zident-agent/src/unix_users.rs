//! Unix users and groups by name or number, as the node knows them (`/etc/passwd`,
//! `/etc/group`), for workloads that declare who runs them.

use zident_mesh::UnixId;

/// Who runs a workload, resolved on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    /// The uid.
    pub uid: u32,
    /// The gid, when the workload declares its group.
    pub gid: Option<u32>,
}

fn lookup(file: &str, name: &str) -> Option<u32> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name).then(|| fields.nth(1)?.parse().ok())?
        })
}

/// A user or group named in the mesh (or a flag) that this node does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {name:?} does not exist on this node ({file}); create it, or give a number")]
pub struct UnknownUnixId {
    /// `user` or `group`.
    pub what: &'static str,
    /// The name as written.
    pub name: String,
    /// The file it was looked up in.
    pub file: &'static str,
}

fn resolve(id: &UnixId, file: &'static str, what: &'static str) -> Result<u32, UnknownUnixId> {
    match id {
        UnixId::Id(n) => Ok(*n),
        UnixId::Name(name) => lookup(file, name).ok_or_else(|| UnknownUnixId {
            what,
            name: name.clone(),
            file,
        }),
    }
}

/// A group's gid, by number or by name (`--workload-api-group`).
pub fn group_id(group: &str) -> Result<u32, UnknownUnixId> {
    let id: UnixId = group.parse().unwrap_or(UnixId::Name(group.to_owned()));
    resolve(&id, "/etc/group", "group")
}

/// Resolves a workload's `user` and `group`.
pub fn run_as(
    user: Option<&UnixId>,
    group: Option<&UnixId>,
) -> Result<Option<RunAs>, UnknownUnixId> {
    let Some(user) = user else { return Ok(None) };
    Ok(Some(RunAs {
        uid: resolve(user, "/etc/passwd", "user")?,
        gid: group
            .map(|g| resolve(g, "/etc/group", "group"))
            .transpose()?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(
            run_as(Some(&UnixId::Id(1001)), Some(&UnixId::Id(1002))).unwrap(),
            Some(RunAs {
                uid: 1001,
                gid: Some(1002)
            })
        );
        assert_eq!(
            run_as(
                Some(&UnixId::Name("root".into())),
                Some(&UnixId::Name("root".into()))
            )
            .unwrap(),
            Some(RunAs {
                uid: 0,
                gid: Some(0)
            })
        );
        let err = run_as(Some(&UnixId::Name("no-such-user-here".into())), None).unwrap_err();
        assert!(
            err.to_string().contains("does not exist on this node"),
            "{err}"
        );
        assert_eq!(run_as(None, None).unwrap(), None);
    }
}
