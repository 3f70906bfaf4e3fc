//! The e-mail Herald writes for one delivery: `multipart/alternative` with a text/plain and a text/html part,
//! the title as Subject, and `X-Herald-Delivery` carrying the delivery id. Content without HTML gets a minimal
//! HTML part made from the text, so every message has both parts (mail clients pick the richer one, and filters
//! look for the pair).

use lettre::Message;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};

use super::SmtpError;
use crate::providers::SendRequest;

/// The message for `request`, from `from` to `email`.
pub(super) fn build(from: &Mailbox, request: &SendRequest, email: &str) -> Result<Message, SmtpError> {
    let to = email.parse::<Mailbox>().map_err(|_| SmtpError::InvalidAddress)?;
    let content = &request.content;
    let html = match &content.html {
        Some(html) => html.clone(),
        None => html_from_text(&content.body),
    };
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(content.title.as_deref().unwrap_or_default())
        .header(HeraldDelivery(request.delivery_id.clone()))
        .multipart(MultiPart::alternative_plain_html(content.body.clone(), html))
        .map_err(|_| SmtpError::InvalidMessage)
}

/// A minimal HTML document showing `text` as it is: markup characters escaped, line breaks kept as `<br>`.
pub(super) fn html_from_text(text: &str) -> String {
    const FRAME: &str = "<!DOCTYPE html><html><body><p></p></body></html>";
    let mut html = String::with_capacity(FRAME.len() + text.len() + text.len() / 8);
    html.push_str("<!DOCTYPE html><html><body><p>");
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => html.push_str("<br>"),
            c => html.push(c),
        }
    }
    html.push_str("</p></body></html>");
    html
}

/// `X-Herald-Delivery: <delivery id>`, to find a message's delivery from the mailbox side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeraldDelivery(pub String);

impl Header for HeraldDelivery {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Herald-Delivery")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(HeraldDelivery(s.trim().to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_becomes_escaped_html_with_line_breaks() {
        assert_eq!(
            html_from_text("a < b & \"c\"\r\nit's >\nend"),
            "<!DOCTYPE html><html><body><p>a &lt; b &amp; &quot;c&quot;<br>it&#39;s &gt;<br>end</p></body></html>"
        );
        assert_eq!(html_from_text(""), "<!DOCTYPE html><html><body><p></p></body></html>");
        assert_eq!(html_from_text("주문\r"), "<!DOCTYPE html><html><body><p>주문<br></p></body></html>");
    }
}
