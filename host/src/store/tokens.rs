//! Tenants: namespaces, and the tokens `sandflow serve` takes, each scoped
//! to namespaces and a role. A token is shown once, when made; the store
//! keeps two digests of it (the one a request's `Authorization` is looked
//! up by, and the one a browser's session cookie is), never the token.

use super::StoreError;
use super::postgres::{PgStore, db};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a token may do, each role all the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads runs, their steps, logs and events.
    Viewer,
    /// Also cancels, resumes and retries runs.
    Operator,
    /// Also submits runs (and uploads their files).
    Submitter,
    /// Every namespace, every action, and the store-wide views (metrics):
    /// `serve --token`.
    Admin,
}

impl Role {
    /// Its name (`operator`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }

    /// A role a token can be made with (`admin` is `serve --token`'s).
    pub fn parse(text: &str) -> Result<Role, String> {
        match text {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "submitter" => Ok(Role::Submitter),
            other => Err(format!("`{other}` is not a role: viewer (reads), operator (also cancels, resumes, retries) or submitter (also submits)")),
        }
    }
}

/// A token as the store keeps it (no secret in it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's name (unique; the audit log names it).
    pub name: String,
    /// The namespaces it may act in.
    pub namespaces: Vec<String>,
    /// What it may do there.
    pub role: Role,
    /// When it was made (RFC 3339).
    pub created_at: String,
    /// When it was revoked (RFC 3339): it is refused from then on.
    pub revoked_at: Option<String>,
}

/// A namespace's name, checked: 1 to 63 lowercase letters, digits and
/// dashes, starting with a letter or digit (as a Kubernetes namespace).
pub fn namespace_name(text: &str) -> Result<String, String> {
    let ok = (1..=63).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-');
    match ok {
        true => Ok(text.to_string()),
        false => Err(format!("`{text}` is not a namespace name: 1 to 63 lowercase letters, digits and dashes, not starting with a dash")),
    }
}

/// The digest a request's token is looked up by.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(format!("sandflow token\n{token}").as_bytes()))
}

/// The session cookie that stands for `token` in a browser: another digest,
/// so that neither the token nor its lookup digest is kept by the browser.
pub fn session(token: &str) -> String {
    hex(&Sha256::digest(format!("sandflow session\n{token}").as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token: `sft_` and 32 random bytes in hex.
pub fn new_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 32];
    let mut random = std::fs::File::open("/dev/urandom").map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
    std::io::Read::read_exact(&mut random, &mut bytes).map_err(|e| StoreError::Backend(format!("no randomness for a token: {e}")))?;
    Ok(format!("sft_{}", hex(&bytes)))
}

/// A namespace's limits and what it uses of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// The namespace's name.
    pub name: String,
    /// Most runs in flight at once (none: no limit).
    pub max_runs: Option<u64>,
    /// Most bytes of files kept for it (none: no limit).
    pub max_stored: Option<u64>,
    /// Most attempts running at once across every worker (none: no limit).
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Its runs in flight now.
    pub running: u64,
    /// Its attempts running on workers now.
    #[serde(default)]
    pub steps_running: u64,
    /// Bytes of files kept for it now.
    pub stored: u64,
}

/// Limits to set on a namespace: for each, `None` leaves it as it was,
/// `Some(None)` lifts it, `Some(Some(n))` sets it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NamespaceLimits {
    /// Most runs in flight at once.
    pub max_runs: Option<Option<u64>>,
    /// Most bytes of files kept.
    pub max_stored: Option<Option<u64>>,
    /// Most attempts running at once across every worker.
    pub max_steps: Option<Option<u64>>,
}

/// One action, as the audit log keeps it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When (RFC 3339).
    pub at: String,
    /// Which token did it (`admin`: `serve --token`; `cli:USER`: the
    /// `sandflow token` command, run with the database's credentials).
    pub token: String,
    /// The namespace it acted in (none: the store's tokens).
    pub namespace: Option<String>,
    /// `submit`, `upload`, `cancel`, `resume`, `retry`, `token create`, `token revoke`.
    pub action: String,
    /// The run it acted on.
    pub run_id: Option<String>,
    /// `done`, or `refused: why`.
    pub outcome: String,
    /// What else it said (a token's name, a `--from` step).
    pub detail: Option<String>,
}

impl PgStore {
    /// Adds `entry` to the audit log (its `at` is now).
    pub async fn audit(&self, entry: &AuditRecord) -> Result<(), StoreError> {
        let client = self.client().await?;
        let insert = client.prepare_cached("INSERT INTO audit (token, namespace, action, run_id, outcome, detail) VALUES ($1, $2, $3, $4, $5, $6)").await.map_err(db)?;
        client.execute(&insert, &[&entry.token, &entry.namespace, &entry.action, &entry.run_id, &entry.outcome, &entry.detail]).await.map_err(db)?;
        Ok(())
    }

    /// The newest `limit` entries of the audit log, of `namespaces` only
    /// (`None`: all, the store's tokens' too).
    pub async fn audit_log(&self, namespaces: Option<&[String]>, limit: i64) -> Result<Vec<AuditRecord>, StoreError> {
        let client = self.client().await?;
        let columns = "EXTRACT(EPOCH FROM at)::float8, token, namespace, action, run_id, outcome, detail";
        let rows = match namespaces {
            None => client.query(&format!("SELECT {columns} FROM audit ORDER BY seq DESC LIMIT $1"), &[&limit]).await,
            Some(ns) => client.query(&format!("SELECT {columns} FROM audit WHERE namespace = ANY($2) ORDER BY seq DESC LIMIT $1"), &[&limit, &ns]).await,
        }
        .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| AuditRecord { at: super::rfc3339(r.get(0)), token: r.get(1), namespace: r.get(2), action: r.get(3), run_id: r.get(4), outcome: r.get(5), detail: r.get(6) })
            .collect())
    }

    /// Makes a token named `name` for `namespaces` with `role`; returns the
    /// token, which is never shown again. A name in use (even revoked) is
    /// refused: names are what the audit of actions says.
    pub async fn create_token(&self, name: &str, namespaces: &[String], role: Role) -> Result<Option<String>, StoreError> {
        let token = new_token()?;
        let client = self.client().await?;
        let added = client
            .execute(
                "INSERT INTO tokens (name, digest, session, namespaces, role) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
                &[&name, &digest(&token), &session(&token), &namespaces, &role.as_str()],
            )
            .await
            .map_err(db)?;
        Ok((added == 1).then_some(token))
    }

    /// Every token, newest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT name, namespaces, role, EXTRACT(EPOCH FROM created_at)::float8, EXTRACT(EPOCH FROM revoked_at)::float8
                 FROM tokens ORDER BY created_at DESC, name",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| TokenRecord {
                name: r.get(0),
                namespaces: r.get(1),
                role: Role::parse(r.get::<_, &str>(2)).unwrap_or(Role::Viewer),
                created_at: super::rfc3339(r.get(3)),
                revoked_at: r.get::<_, Option<f64>>(4).map(super::rfc3339),
            })
            .collect())
    }

    /// Revokes token `name`: refused from the next request on. Whether
    /// there was such a token not yet revoked.
    pub async fn revoke_token(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let n = client.execute("UPDATE tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", &[&name]).await.map_err(db)?;
        Ok(n == 1)
    }

    /// The token a request carries, by its digest (`Authorization`) or its
    /// session cookie: its name, namespaces and role; `Err` with why when
    /// it is revoked; `None` when the store has no such token.
    pub async fn token_by(&self, digest_or_session: &str, is_session: bool) -> Result<Option<Result<TokenRecord, String>>, StoreError> {
        let client = self.client().await?;
        let column = if is_session { "session" } else { "digest" };
        let row = client
            .query_opt(&format!("SELECT name, namespaces, role, revoked_at IS NOT NULL FROM tokens WHERE {column} = $1"), &[&digest_or_session])
            .await
            .map_err(db)?;
        Ok(row.map(|r| {
            let name: String = r.get(0);
            match r.get::<_, bool>(3) {
                true => Err(format!("token `{name}` was revoked")),
                false => Ok(TokenRecord {
                    name,
                    namespaces: r.get(1),
                    role: Role::parse(r.get::<_, &str>(2)).unwrap_or(Role::Viewer),
                    created_at: String::new(),
                    revoked_at: None,
                }),
            }
        }))
    }

    /// Sets namespace `name`'s limits: those `limits` names, leaving the
    /// others as they were.
    pub async fn set_namespace(&self, name: &str, limits: &NamespaceLimits) -> Result<(), StoreError> {
        let client = self.client().await?;
        let as_sql = |v: Option<Option<u64>>| v.map(|v| v.map(|n| n.min(i64::MAX as u64) as i64));
        let (runs, stored, steps) = (as_sql(limits.max_runs), as_sql(limits.max_stored), as_sql(limits.max_steps));
        client
            .execute(
                "INSERT INTO namespaces (name, max_runs, max_stored, max_steps) VALUES ($1, $3, $5, $7)
                 ON CONFLICT (name) DO UPDATE SET max_runs = CASE WHEN $2 THEN $3 ELSE namespaces.max_runs END,
                                                  max_stored = CASE WHEN $4 THEN $5 ELSE namespaces.max_stored END,
                                                  max_steps = CASE WHEN $6 THEN $7 ELSE namespaces.max_steps END",
                &[&name, &runs.is_some(), &runs.flatten(), &stored.is_some(), &stored.flatten(), &steps.is_some(), &steps.flatten()],
            )
            .await
            .map_err(db)?;
        if steps.is_some() {
            // Workers holding back this namespace's jobs look again.
            client.execute("SELECT pg_notify($1, '')", &[&crate::store::queue::JOBS_CHANNEL]).await.map_err(db)?;
        }
        Ok(())
    }

    /// Every namespace that has runs, files, tokens or limits: its limits
    /// and what it uses.
    pub async fn namespaces(&self) -> Result<Vec<NamespaceRecord>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "WITH names AS (SELECT name FROM namespaces UNION SELECT DISTINCT namespace FROM runs
                                UNION SELECT DISTINCT namespace FROM namespace_files UNION SELECT DISTINCT unnest(namespaces) FROM tokens)
                 SELECT n.name, l.max_runs, l.max_stored, l.max_steps,
                        (SELECT count(*) FROM runs r WHERE r.namespace = n.name AND r.status = 'running'),
                        (SELECT COALESCE(sum(length(f.bytes)), 0)::BIGINT FROM namespace_files nf JOIN files f ON f.sha256 = nf.sha256 WHERE nf.namespace = n.name),
                        (SELECT count(*) FROM jobs j JOIN runs r ON r.id = j.run_id WHERE j.state = 'claimed' AND r.namespace = n.name)
                 FROM names n LEFT JOIN namespaces l ON l.name = n.name ORDER BY n.name",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| NamespaceRecord {
                name: r.get(0),
                max_runs: r.get::<_, Option<i64>>(1).map(|n| n.max(0) as u64),
                max_stored: r.get::<_, Option<i64>>(2).map(|n| n.max(0) as u64),
                max_steps: r.get::<_, Option<i64>>(3).map(|n| n.max(0) as u64),
                running: r.get::<_, i64>(4).max(0) as u64,
                stored: r.get::<_, i64>(5).max(0) as u64,
                steps_running: r.get::<_, i64>(6).max(0) as u64,
            })
            .collect())
    }

    /// Whether any token is in force: then `serve` asks every request for one.
    pub async fn has_tokens(&self) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let any = client.prepare_cached("SELECT EXISTS (SELECT 1 FROM tokens WHERE revoked_at IS NULL)").await.map_err(db)?;
        Ok(client.query_one(&any, &[]).await.map_err(db)?.get(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_are_dns_labels() {
        for ok in ["default", "team-a", "a", "x1", &"a".repeat(63)] {
            assert!(namespace_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Team", "-a", "a_b", "a.b", "a/b", &"a".repeat(64), "ü"] {
            assert!(namespace_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_order_what_they_may_do() {
        assert!(Role::Viewer < Role::Operator && Role::Operator < Role::Submitter && Role::Submitter < Role::Admin);
        assert_eq!(Role::parse("operator"), Ok(Role::Operator));
        assert!(Role::parse("admin").is_err(), "admin is serve --token's, not a token's");
    }

    #[test]
    fn tokens_are_random_and_kept_as_two_digests() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert!(a.starts_with("sft_") && a.len() == 68, "{a}");
        assert_ne!(digest(&a), session(&a));
        assert!(!digest(&a).contains(&a[4..]));
    }
}
