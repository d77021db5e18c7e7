//! The authorization server's pages: plain server-rendered HTML forms (no scripts, no
//! front-end build), every value escaped. Each form carries the id of the authorization
//! request it belongs to, which an attacker cannot guess, so it doubles as the CSRF token.

use std::fmt::Write as _;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::Choice;
use super::no_store;
use crate::scope::Scope;

/// `text` safe inside HTML text and double-quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;\
padding:0 1rem;color:#1b1b1b}h1{font-size:1.4rem}label{display:block;margin:.6rem 0}\
input[type=text],input[type=password],input[type=search]{width:100%;padding:.5rem;\
box-sizing:border-box}button{padding:.5rem 1.2rem;margin:.8rem .4rem 0 0}\
.error{color:#a00000}.note{color:#555;font-size:.9rem}li{list-style:none;margin:.3rem 0}\
ul{padding:0}";

/// A whole page: the title, the body, and the origins (besides this server) that may frame it,
/// so that an app embedded in an EHR can show the login inside its frame.
pub fn page(status: StatusCode, title: &str, body: &str, frame_origins: &[String]) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    );
    let mut ancestors = String::from("'self'");
    for origin in frame_origins {
        // Origins are registered by the operator; anything that is not a plain origin is left
        // out rather than allowed to break the policy.
        if origin
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":/.-".contains(c))
        {
            ancestors.push(' ');
            ancestors.push_str(origin);
        }
    }
    let policy = format!(
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors {ancestors}; \
         base-uri 'none'"
    );
    let mut response = no_store((status, Html(html)).into_response());
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// An error that cannot be sent back to the app (unknown client, wrong redirect URI, an
/// expired form).
pub fn error_page(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Cannot continue",
        &format!(
            "<h1>Cannot continue</h1><p class=\"error\">{}</p>\
             <p class=\"note\">Go back to the app and start again.</p>",
            escape(message)
        ),
        &[],
    )
}

/// The hidden field naming the authorization request.
fn request_field(request: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"request\" value=\"{}\">",
        escape(request)
    )
}

fn error_line(error: Option<&str>) -> String {
    error.map_or(String::new(), |e| {
        format!("<p class=\"error\" role=\"alert\">{}</p>", escape(e))
    })
}

/// The login form, and a link to sign in at the `upstream` provider if there is one.
pub fn login(
    server_name: &str,
    app: &str,
    request: &str,
    upstream: Option<&str>,
    error: Option<&str>,
    frame: &[String],
) -> Response {
    let upstream = upstream.map_or(String::new(), |name| {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("request", request)
            .finish();
        format!(
            "<p><a href=\"upstream/start?{}\">Sign in with {}</a></p><p class=\"note\">or \
             with a {} password:</p>",
            escape(&query),
            escape(name),
            escape(server_name)
        )
    });
    let body = format!(
        "<h1>Sign in to {server}</h1><p>{app} asks to use your {server} account.</p>{error}\
         {upstream}<form method=\"post\" action=\"login\">{request}\
         <label>Username <input type=\"text\" name=\"username\" autocomplete=\"username\" \
         required autofocus></label>\
         <label>Password <input type=\"password\" name=\"password\" \
         autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Sign in</button></form>",
        server = escape(server_name),
        app = escape(app),
        error = error_line(error),
        request = request_field(request),
    );
    page(StatusCode::OK, "Sign in", &body, frame)
}

/// The second-factor form.
pub fn second_factor(request: &str, error: Option<&str>, frame: &[String]) -> Response {
    let body = format!(
        "<h1>Enter your code</h1><p>Enter the 6-digit code from your authenticator app.</p>\
         {error}<form method=\"post\" action=\"second-factor\">{request}\
         <label>Code <input type=\"text\" name=\"code\" inputmode=\"numeric\" \
         autocomplete=\"one-time-code\" pattern=\"[0-9]{{6}}\" required autofocus></label>\
         <button type=\"submit\">Continue</button></form>",
        error = error_line(error),
        request = request_field(request),
    );
    page(StatusCode::OK, "Second factor", &body, frame)
}

/// The patient picker: a search box and the patients found.
pub fn patient_picker(
    request: &str,
    search: &str,
    choices: &[Choice],
    error: Option<&str>,
    frame: &[String],
) -> Response {
    let mut list = String::new();
    for (i, choice) in choices.iter().enumerate() {
        let _ = write!(
            list,
            "<li><label><input type=\"radio\" name=\"patient\" value=\"{}\"{}> {}</label></li>",
            escape(&choice.id),
            if i == 0 { " required" } else { "" },
            escape(&choice.label)
        );
    }
    if choices.is_empty() {
        list.push_str("<li class=\"note\">No patient matches.</li>");
    }
    let body = format!(
        "<h1>Choose a patient</h1>{error}\
         <form method=\"post\" action=\"patient\">{request}\
         <label>Name or identifier <input type=\"search\" name=\"search\" value=\"{search}\">\
         </label><button type=\"submit\" name=\"action\" value=\"search\" formnovalidate>\
         Search</button></form>\
         <form method=\"post\" action=\"patient\">{request}<ul>{list}</ul>\
         <button type=\"submit\" name=\"action\" value=\"choose\">Continue</button></form>",
        error = error_line(error),
        request = request_field(request),
        search = escape(search),
    );
    page(StatusCode::OK, "Choose a patient", &body, frame)
}

/// The encounter picker, for a standalone launch that asked for `launch/encounter`.
pub fn encounter_picker(
    request: &str,
    choices: &[Choice],
    error: Option<&str>,
    frame: &[String],
) -> Response {
    let mut list = String::new();
    for choice in choices {
        let _ = write!(
            list,
            "<li><label><input type=\"radio\" name=\"encounter\" value=\"{}\"> {}</label></li>",
            escape(&choice.id),
            escape(&choice.label)
        );
    }
    let body = format!(
        "<h1>Choose an encounter</h1>{error}\
         <form method=\"post\" action=\"encounter\">{request}<ul>{list}\
         <li><label><input type=\"radio\" name=\"encounter\" value=\"\" checked> \
         No particular encounter</label></li></ul>\
         <button type=\"submit\">Continue</button></form>",
        error = error_line(error),
        request = request_field(request),
    );
    page(StatusCode::OK, "Choose an encounter", &body, frame)
}

/// The consent form: each scope asked for, ticked; the user unticks what they do not grant.
pub fn consent(
    app: &str,
    request: &str,
    scopes: &[Scope],
    patient: Option<&Choice>,
    frame: &[String],
) -> Response {
    let mut list = String::new();
    for scope in scopes {
        let text = scope.to_string();
        let _ = write!(
            list,
            "<li><label><input type=\"checkbox\" name=\"scope\" value=\"{}\" checked> {} \
             <span class=\"note\">({})</span></label></li>",
            escape(&text),
            escape(&scope.describe()),
            escape(&text)
        );
    }
    let about = patient.map_or(String::new(), |p| {
        format!("<p>Patient: <strong>{}</strong></p>", escape(&p.label))
    });
    let body = format!(
        "<h1>Allow {app}?</h1>{about}<p>{app} asks to:</p>\
         <form method=\"post\" action=\"consent\">{request}<ul>{list}</ul>\
         <p class=\"note\">Untick anything you do not want to allow.</p>\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        app = escape(app),
        request = request_field(request),
    );
    page(StatusCode::OK, "Allow access", &body, frame)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escape_neutralises_markup_and_attribute_quotes() {
        assert_eq!(
            escape("<a href=\"x\" onclick='y'>&</a>"),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }
}
