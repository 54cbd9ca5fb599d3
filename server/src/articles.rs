//! The owner's blog articles: the data behind the MCP tools and resources, kept in the
//! same store as everything else (`article:<slug>`, no TTL).

use serde::{Deserialize, Serialize};

use crate::{
    oauth::now_secs,
    store::{Key, Put, SharedStore, StoreError},
};

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_BODY_BYTES: usize = 48 * 1024;
pub const MAX_SLUG_CHARS: usize = 80;
pub const MAX_PAGE: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Draft,
    Published,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Article {
    pub slug: String,
    pub title: String,
    pub body: String,
    pub status: Status,
    /// Seconds since the epoch.
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<u64>,
}

/// A listing entry: an article without its body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub slug: String,
    pub title: String,
    pub status: Status,
    pub updated_at: u64,
}

impl From<&Article> for Summary {
    fn from(a: &Article) -> Self {
        Summary {
            slug: a.slug.clone(),
            title: a.title.clone(),
            status: a.status,
            updated_at: a.updated_at,
        }
    }
}

/// Why an article operation failed; `Invalid` and `NotFound` are the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum ArticleError {
    #[error("{0}")]
    Invalid(String),
    #[error("no article has the slug {0:?}")]
    NotFound(String),
    #[error("an article with the slug {0:?} already exists")]
    Exists(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A slug: lower-case letters, digits and single hyphens, at most 80 characters.
pub fn check_slug(slug: &str) -> Result<(), ArticleError> {
    let valid = !slug.is_empty()
        && slug.len() <= MAX_SLUG_CHARS
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && !slug.contains("--");
    if valid {
        Ok(())
    } else {
        Err(ArticleError::Invalid(format!(
            "slug {slug:?} must be 1 to {MAX_SLUG_CHARS} lower-case letters, digits and single hyphens"
        )))
    }
}

/// A slug made from a title: "Hello, World!" → "hello-world".
pub fn slugify(title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    slug.chars()
        .take(MAX_SLUG_CHARS)
        .collect::<String>()
        .trim_end_matches('-')
        .to_owned()
}

fn check_title(title: &str) -> Result<String, ArticleError> {
    let title = title.trim();
    if title.is_empty() || title.chars().count() > MAX_TITLE_CHARS {
        return Err(ArticleError::Invalid(format!(
            "title must have 1 to {MAX_TITLE_CHARS} characters"
        )));
    }
    Ok(title.to_owned())
}

fn check_body(body: &str) -> Result<(), ArticleError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ArticleError::Invalid(format!(
            "body must be at most {MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn key(slug: &str) -> Key {
    Key::new("article", slug)
}

#[derive(Clone)]
pub struct Articles {
    store: SharedStore,
}

/// One page of a listing.
#[derive(Debug, Serialize)]
pub struct Page {
    pub articles: Vec<Summary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl Articles {
    pub fn new(store: SharedStore) -> Self {
        Articles { store }
    }

    async fn all(&self) -> Result<Vec<Article>, ArticleError> {
        let mut articles = Vec::new();
        for (_, raw) in self.store.scan("article:").await? {
            match serde_json::from_slice::<Article>(&raw) {
                Ok(article) => articles.push(article),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable article"),
            }
        }
        // Newest first; the slug breaks ties so pages are stable.
        articles.sort_by(|a, b| {
            b.updated_at
                .cmp(&a.updated_at)
                .then_with(|| a.slug.cmp(&b.slug))
        });
        Ok(articles)
    }

    /// A page of articles, newest first. The cursor is the offset of the next page.
    pub async fn list(
        &self,
        status: Option<Status>,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page, ArticleError> {
        let limit = limit.clamp(1, MAX_PAGE);
        let offset = match cursor {
            None => 0,
            Some(c) => c.parse::<usize>().map_err(|_| {
                ArticleError::Invalid(format!("cursor {c:?} is not one this server gave out"))
            })?,
        };
        let matching: Vec<Article> = self
            .all()
            .await?
            .into_iter()
            .filter(|a| status.is_none_or(|s| a.status == s))
            .collect();
        let articles: Vec<Summary> = matching
            .iter()
            .skip(offset)
            .take(limit)
            .map(Summary::from)
            .collect();
        let next = offset + articles.len();
        Ok(Page {
            next_cursor: (next < matching.len()).then(|| next.to_string()),
            articles,
        })
    }

    pub async fn get(&self, slug: &str) -> Result<Article, ArticleError> {
        check_slug(slug)?;
        let record = self.store.get(&key(slug)).await?;
        Self::decode(slug, record)
    }

    /// Where the article `slug` lives, when `slug` is valid: for callers that read it
    /// together with other records and hand the result to [`Articles::decode`].
    pub fn key_of(slug: &str) -> Option<Key> {
        check_slug(slug).ok().map(|()| key(slug))
    }

    /// The article in a record read under [`Articles::key_of`].
    pub fn decode(slug: &str, record: Option<Vec<u8>>) -> Result<Article, ArticleError> {
        match record {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| {
                ArticleError::Store(StoreError::Backend(format!("corrupt article: {e}")))
            }),
            None => Err(ArticleError::NotFound(slug.to_owned())),
        }
    }

    /// Articles whose title or body contains `query` (case-insensitive), newest first.
    pub async fn search(&self, query: &str, limit: usize) -> Result<Vec<Summary>, ArticleError> {
        let query = query.trim().to_lowercase();
        if query.is_empty() {
            return Err(ArticleError::Invalid("query must not be empty".into()));
        }
        Ok(self
            .all()
            .await?
            .iter()
            .filter(|a| {
                a.title.to_lowercase().contains(&query) || a.body.to_lowercase().contains(&query)
            })
            .take(limit.clamp(1, MAX_PAGE))
            .map(Summary::from)
            .collect())
    }

    /// Creates a draft. The slug defaults to one made from the title.
    pub async fn create(
        &self,
        slug: Option<&str>,
        title: &str,
        body: &str,
    ) -> Result<Article, ArticleError> {
        let title = check_title(title)?;
        check_body(body)?;
        let slug = match slug {
            Some(slug) => slug.to_owned(),
            None => slugify(&title),
        };
        check_slug(&slug)?;
        let now = now_secs();
        let article = Article {
            slug: slug.clone(),
            title,
            body: body.to_owned(),
            status: Status::Draft,
            created_at: now,
            updated_at: now,
            published_at: None,
        };
        let raw = serde_json::to_vec(&article).map_err(|e| StoreError::Backend(e.to_string()))?;
        if !self
            .store
            .put_new(&key(&slug), &raw, Put::forever())
            .await?
        {
            return Err(ArticleError::Exists(slug));
        }
        Ok(article)
    }

    /// Applies `change` to the stored article atomically (compare-and-swap, retried).
    async fn modify(
        &self,
        slug: &str,
        change: impl Fn(&mut Article) -> Result<(), ArticleError>,
    ) -> Result<Article, ArticleError> {
        check_slug(slug)?;
        for _ in 0..5 {
            let Some(current) = self.store.get(&key(slug)).await? else {
                return Err(ArticleError::NotFound(slug.to_owned()));
            };
            let mut article: Article = serde_json::from_slice(&current)
                .map_err(|e| StoreError::Backend(format!("corrupt article: {e}")))?;
            change(&mut article)?;
            article.updated_at = now_secs();
            let raw =
                serde_json::to_vec(&article).map_err(|e| StoreError::Backend(e.to_string()))?;
            if self
                .store
                .compare_and_swap(&key(slug), &current, &raw, Put::forever())
                .await?
            {
                return Ok(article);
            }
        }
        Err(ArticleError::Invalid(
            "the article changed concurrently; try again".into(),
        ))
    }

    pub async fn update(
        &self,
        slug: &str,
        title: Option<&str>,
        body: Option<&str>,
    ) -> Result<Article, ArticleError> {
        if title.is_none() && body.is_none() {
            return Err(ArticleError::Invalid(
                "give a new title, a new body, or both".into(),
            ));
        }
        let title = title.map(check_title).transpose()?;
        if let Some(body) = body {
            check_body(body)?;
        }
        self.modify(slug, |article| {
            if let Some(title) = &title {
                article.title = title.clone();
            }
            if let Some(body) = body {
                article.body = body.to_owned();
            }
            Ok(())
        })
        .await
    }

    pub async fn publish(&self, slug: &str) -> Result<Article, ArticleError> {
        self.modify(slug, |article| {
            if article.status != Status::Published {
                article.status = Status::Published;
                article.published_at = Some(now_secs());
            }
            Ok(())
        })
        .await
    }

    pub async fn delete(&self, slug: &str) -> Result<(), ArticleError> {
        check_slug(slug)?;
        if self.store.delete(&key(slug)).await? {
            Ok(())
        } else {
            Err(ArticleError::NotFound(slug.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(slugify("Hello, World!"), "hello-world");
        assert_eq!(slugify("  Ünïcode & more  "), "n-code-more");
        assert!(check_slug("hello-world").is_ok());
        for bad in ["", "Hello", "a--b", "-a", "a-", "a b", "../etc"] {
            assert!(check_slug(bad).is_err(), "{bad}");
        }
    }
}
