//! List answers (`GET /api/instances`, `GET /api/users`): serialized once per
//! change of the caches they are made from, shared by every reader without a copy
//! (refcounted bytes), gzip-compressed once when a client accepts it, and served
//! whole (the Skyport shape) or a page at a time (`?page=&perPage=`).
//!
//! At 10,000 instances the list is ~6 MB: serializing it costs far more than
//! sending it, and most reads find nothing changed. Builds run on the blocking
//! pool (they would stall a runtime worker, and every request queued behind it,
//! for tens of milliseconds) and one at a time per list: readers that arrive
//! during a build wait for the next one rather than each starting their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;

mod body;
mod rendered;

pub use rendered::Rendered;

/// Items per page when `page` is given without `perPage`.
pub const DEFAULT_PER_PAGE: usize = 100;
/// Most items per page.
pub const MAX_PER_PAGE: usize = 1000;
/// The error of a bad `?page=` or `?perPage=`.
const BAD_PAGE: &str = "page must be a whole number from 1, perPage one from 1 to 1000";
/// The header carrying the number of items in the whole list, on a page.
pub const TOTAL_COUNT_HEADER: &str = "x-total-count";

/// Whether an `Accept-Encoding` value accepts gzip (pure): listed, or `*`, with
/// a quality above zero.
pub fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|coding| {
        let mut parts = coding.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        let q = parts
            .find_map(|p| p.strip_prefix("q="))
            .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok());
        (name.eq_ignore_ascii_case("gzip") || name == "*") && q.is_some_and(|q| q > 0.0)
    })
}

/// One page of a list: 1-based number and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based.
    pub number: usize,
    /// Items per page.
    pub per_page: usize,
}

impl Page {
    /// Index of the page's first item.
    fn first(self) -> usize {
        (self.number - 1).saturating_mul(self.per_page)
    }

    /// Number of pages a list of `total` items has (at least 1).
    fn count(self, total: usize) -> usize {
        total.div_ceil(self.per_page).max(1)
    }
}

/// `?page=&perPage=` as sent.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1 (default 1 when `perPage` is given).
    #[param(value_type = Option<u32>)]
    page: Option<String>,
    /// Items per page, 1 to 1000 (default 100 when `page` is given).
    #[serde(rename = "perPage")]
    #[param(value_type = Option<u32>)]
    per_page: Option<String>,
}

impl PageQuery {
    /// The page asked for (pure): `None` when neither parameter is given (the whole
    /// list); either alone takes the other's default.
    pub fn page(&self) -> Result<Option<Page>, &'static str> {
        let number = |s: &Option<String>, max: usize| match s.as_deref() {
            None | Some("") => Ok(None),
            Some(t) => t
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .map(Some)
                .ok_or(BAD_PAGE),
        };
        let page = number(&self.page, usize::MAX / MAX_PER_PAGE)?;
        let per_page = number(&self.per_page, MAX_PER_PAGE)?;
        if page.is_none() && per_page.is_none() {
            return Ok(None);
        }
        Ok(Some(Page {
            number: page.unwrap_or(1),
            per_page: per_page.unwrap_or(DEFAULT_PER_PAGE),
        }))
    }
}

/// What a list request asks for: a page or the whole list, gzip or not.
pub struct ListRequest {
    page: Option<Page>,
    gzip: bool,
    path: String,
}

/// Read from the request itself: a handler takes a `ListRequest` argument.
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ListRequest {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        let query = Query::<PageQuery>::from_request_parts(parts, state).await;
        Self::new(&parts.uri, &parts.headers, query)
    }
}

impl ListRequest {
    /// From the query and headers; a bad page is a JSON 400.
    pub fn new(
        uri: &axum::http::Uri,
        headers: &HeaderMap,
        query: Result<Query<PageQuery>, QueryRejection>,
    ) -> Result<Self, ApiError> {
        // A query that does not parse gets this API's JSON error, not axum's text.
        let Query(q) = query.map_err(|_| ApiError::bad_request(BAD_PAGE))?;
        Ok(Self {
            page: q.page().map_err(ApiError::bad_request)?,
            gzip: headers
                .get_all(header::ACCEPT_ENCODING)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(accepts_gzip),
            path: uri.path().to_owned(),
        })
    }

    /// The answer from `list`.
    pub async fn respond(&self, list: &Arc<Rendered>) -> Response {
        let json = (
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
        match self.page {
            // Pages are at most 1,000 items, made per request: sent as they are.
            Some(page) => {
                let mut resp = ([json, vary], list.page(page)).into_response();
                self.page_headers(page, list.len(), resp.headers_mut());
                resp
            }
            None if self.gzip => {
                let gz = (header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
                ([json, vary, gz], list.gzip().await).into_response()
            }
            None => {
                let body = axum::body::Body::new(body::Chunks::new(list.frames()));
                ([json, vary], body).into_response()
            }
        }
    }

    /// `X-Total-Count` and a `Link` header with the next and last pages, as
    /// GitHub's API pages its lists.
    fn page_headers(&self, page: Page, total: usize, headers: &mut HeaderMap) {
        headers.insert(TOTAL_COUNT_HEADER, HeaderValue::from(total));
        let at = |n: usize| format!("<{}?page={n}&perPage={}>", self.path, page.per_page);
        let last = page.count(total);
        let mut links = Vec::new();
        if page.number < last {
            links.push(format!("{}; rel=\"next\"", at(page.number + 1)));
        }
        links.push(format!("{}; rel=\"last\"", at(last)));
        if let Ok(v) = HeaderValue::from_str(&links.join(", ")) {
            headers.insert(header::LINK, v);
        }
    }
}

/// A list as last built, and from which cache versions.
struct Entry {
    versions: Vec<u64>,
    /// Builds are numbered in the order they start.
    build: u64,
    list: Arc<Rendered>,
}

/// One list's slot: its last build, and the lock one build at a time holds.
#[derive(Default)]
struct Slot {
    entry: Mutex<Option<Entry>>,
    started: Mutex<u64>,
    flight: tokio::sync::Mutex<()>,
}

/// Serialized list answers by name.
#[derive(Clone, Default)]
pub struct ListCache(Arc<Mutex<HashMap<&'static str, Arc<Slot>>>>);

impl ListCache {
    /// The list named `name` for cache versions `versions`, built by `build` when
    /// missing or stale. `versions` must be read before the data `build` reads,
    /// so that a change during the build leaves an entry the next read finds stale.
    /// `build` gets the last build, if any, to reuse what is unchanged.
    pub async fn get<F>(&self, name: &'static str, versions: Vec<u64>, build: F) -> Arc<Rendered>
    where
        F: FnOnce(Option<Arc<Rendered>>) -> Rendered + Send + 'static,
    {
        let slot = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_default()
            .clone();
        let arrived_after = *slot.started.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = slot.fresh(&versions, arrived_after) {
            return hit;
        }
        let _flight = slot.flight.lock().await;
        // A build that started after this request arrived read the caches after
        // it too: as fresh as one this request would start.
        if let Some(hit) = slot.fresh(&versions, arrived_after) {
            return hit;
        }
        let build_no = {
            let mut started = slot.started.lock().unwrap_or_else(|e| e.into_inner());
            *started += 1;
            *started
        };
        let previous = slot.last();
        let list = tokio::task::spawn_blocking(move || Arc::new(build(previous)))
            .await
            .unwrap_or_else(|_| Arc::new(Rendered::new(std::iter::empty::<()>())));
        *slot.entry.lock().unwrap_or_else(|e| e.into_inner()) = Some(Entry {
            versions,
            build: build_no,
            list: list.clone(),
        });
        list
    }
}

impl Slot {
    /// The last build, fresh or not.
    fn last(&self) -> Option<Arc<Rendered>> {
        self.entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|e| e.list.clone())
    }

    /// The last build, if made from `versions` or started after build `after`.
    fn fresh(&self, versions: &[u64], after: u64) -> Option<Arc<Rendered>> {
        self.entry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|e| e.versions == versions || e.build > after)
            .map(|e| e.list.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(page: Option<&str>, per_page: Option<&str>) -> PageQuery {
        PageQuery {
            page: page.map(str::to_owned),
            per_page: per_page.map(str::to_owned),
        }
    }

    #[test]
    fn pages_are_parsed_with_defaults_and_bounds() {
        assert_eq!(query(None, None).page(), Ok(None));
        assert_eq!(
            query(Some("2"), None).page(),
            Ok(Some(Page {
                number: 2,
                per_page: DEFAULT_PER_PAGE
            }))
        );
        assert_eq!(
            query(None, Some("10")).page(),
            Ok(Some(Page {
                number: 1,
                per_page: 10
            }))
        );
        for (p, pp) in [
            (Some("0"), None),
            (Some("-1"), None),
            (Some("x"), None),
            (None, Some("0")),
            (None, Some("1001")),
            (Some("1.5"), Some("10")),
        ] {
            assert_eq!(query(p, pp).page(), Err(BAD_PAGE), "{p:?} {pp:?}");
        }
    }

    #[test]
    fn gzip_is_accepted_as_http_says() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("br, gzip;q=0.5"));
        assert!(accepts_gzip("GZIP"));
        assert!(accepts_gzip("*"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("br, deflate"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
    }

    #[tokio::test]
    async fn readers_share_one_build_per_version() {
        let cache = ListCache::default();
        let builds = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let build = |n: usize| {
            let builds = builds.clone();
            move |_| {
                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Rendered::new([n].into_iter())
            }
        };
        let a = cache.get("l", vec![1], build(1)).await;
        let b = cache.get("l", vec![1], build(1)).await;
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
        let c = cache.get("l", vec![2], build(2)).await;
        assert_eq!(&c.to_vec()[..], b"[2]");
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
