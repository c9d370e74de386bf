//! Accounts and their API tokens.

use crate::db::*;
use crate::*;

columns!(Account { id, name, endpoint, region, registration_code, created });

impl Tx {
    /// Creates an account.
    pub async fn create_account(&mut self, name: &str, endpoint: &str, region: &str) -> Result<Account> {
        const NAME_RULE: &str = "1-128 characters of a-z A-Z 0-9 : _ -";
        let name_ok = |s: &str| {
            (1..=128).contains(&s.len())
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'-'))
        };
        if !name_ok(name) {
            return Err(RegistryError::invalid("account name", name, NAME_RULE));
        }
        let host_ok = !endpoint.is_empty()
            && endpoint.len() <= 253
            && endpoint.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !host_ok {
            return Err(RegistryError::invalid("endpoint", endpoint, "a host name"));
        }
        if !name_ok(region) {
            return Err(RegistryError::invalid("region", region, NAME_RULE));
        }
        let account = Account {
            id: AccountId::new(&random_digits(12)?)?,
            name: name.to_owned(),
            endpoint: endpoint.to_ascii_lowercase(),
            region: region.to_owned(),
            registration_code: random_hex(32)?,
            created: now_ms(),
        };
        let n = self.run("INSERT INTO accounts (id, name, endpoint, region, registration_code, created) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING", args![&account.id, &account.name, &account.endpoint, &account.region, &account.registration_code, account.created]).await?;
        created(n, "account", name)?;
        Ok(account)
    }

    /// An account by id.
    pub async fn account(&mut self, id: &AccountId) -> Result<Account> {
        self.optional::<Account>("SELECT * FROM accounts WHERE id = $1", args![id])
            .await?
            .ok_or_else(|| RegistryError::not_found("account", id))
    }

    /// An account by name.
    pub async fn account_by_name(&mut self, name: &str) -> Result<Option<Account>> {
        self.optional::<Account>("SELECT * FROM accounts WHERE name = $1", args![name]).await
    }

    /// The account whose endpoint is `host` (the SNI a device sent).
    pub async fn account_by_endpoint(&mut self, host: &str) -> Result<Option<Account>> {
        self.optional::<Account>(
            "SELECT * FROM accounts WHERE endpoint = $1",
            args![host.to_ascii_lowercase()],
        )
        .await
    }

    /// Every account.
    pub async fn accounts(&mut self) -> Result<Vec<Account>> {
        self.all::<Account>("SELECT * FROM accounts ORDER BY name", args![]).await
    }

    /// Creates an API token for an account. The token is returned once; only its hash is kept.
    pub async fn create_api_token(&mut self, account_id: &AccountId, name: &str) -> Result<String> {
        self.account(account_id).await?;
        let token = format!("clk_{}", random_hex(32)?);
        self.run(
            "INSERT INTO api_tokens (token_hash, account_id, name, created) VALUES ($1, $2, $3, $4)",
            args![token_hash(&token), account_id, name, now_ms()],
        )
        .await?;
        Ok(token)
    }

    /// The account and token name an API token belongs to.
    pub async fn account_for_token(&mut self, token: &str) -> Result<Option<(Account, String)>> {
        let Some((account_id, token_name)) = self
            .optional::<(AccountId, String)>(
                "SELECT account_id, name FROM api_tokens WHERE token_hash = $1",
                args![token_hash(token)],
            )
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((self.account(&account_id).await?, token_name)))
    }
}
