//! Contact normalization: phone numbers to E.164 (accepting Korean `010…` forms) and e-mail addresses.

use thiserror::Error;

/// Why a contact was refused; the API maps it to a 422 on the field that carried it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContactError {
    #[error("phone number must be E.164 (+8210...) or a Korean mobile number (010...)")]
    InvalidPhone,
    #[error("e-mail address is not valid")]
    InvalidEmail,
}

/// Normalizes a phone number to E.164.
///
/// Accepts `+<country><number>` with separators (spaces, dashes, dots, parentheses) and Korean domestic numbers
/// starting with `0` (`010-1234-5678` → `+821012345678`). E.164 allows at most 15 digits.
pub fn normalize_phone(raw: &str) -> Result<String, ContactError> {
    let trimmed = raw.trim();
    let (international, rest) = match trimmed.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, trimmed),
    };
    let mut digits = String::with_capacity(rest.len());
    for ch in rest.chars() {
        match ch {
            '0'..='9' => digits.push(ch),
            ' ' | '-' | '.' | '(' | ')' => {}
            _ => return Err(ContactError::InvalidPhone),
        }
    }
    let e164_digits = if international {
        digits
    } else if let Some(national) = digits.strip_prefix('0') {
        // Korean domestic form: 010, 011, 016–019 mobiles and 0N area codes.
        if national.is_empty() || national.starts_with('0') {
            return Err(ContactError::InvalidPhone);
        }
        format!("82{national}")
    } else {
        return Err(ContactError::InvalidPhone);
    };
    if !(8..=15).contains(&e164_digits.len()) || e164_digits.starts_with('0') {
        return Err(ContactError::InvalidPhone);
    }
    Ok(format!("+{e164_digits}"))
}

/// Checks an e-mail address for the shape providers accept (`local@domain.tld`) and lowercases the domain.
pub fn normalize_email(raw: &str) -> Result<String, ContactError> {
    let trimmed = raw.trim();
    let (local, domain) = trimmed.rsplit_once('@').ok_or(ContactError::InvalidEmail)?;
    let valid_local = !local.is_empty()
        && local.len() <= 64
        && !local.contains(|c: char| c.is_whitespace() || c.is_control() || c == '@' || c == '<' || c == '>');
    let valid_domain = domain.len() <= 253
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain.chars().all(|c| c.is_alphanumeric() || c == '-' || c == '.');
    if !valid_local || !valid_domain {
        return Err(ContactError::InvalidEmail);
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

/// Masks a phone number, e-mail or token for logs: keeps a short prefix and suffix only.
pub fn mask(value: &str) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= 6 {
        return "***".to_string();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}***{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn korean_mobile_numbers_become_e164() {
        assert_eq!(normalize_phone("010-1234-5678").unwrap(), "+821012345678");
        assert_eq!(normalize_phone("01012345678").unwrap(), "+821012345678");
        assert_eq!(normalize_phone("+82 10 1234 5678").unwrap(), "+821012345678");
        assert_eq!(normalize_phone("+1 (415) 555-0100").unwrap(), "+14155550100");
    }

    #[test]
    fn malformed_phone_numbers_are_refused() {
        for bad in ["", "12345", "+0123456789", "010-abcd-5678", "+1234567890123456", "00", "phone"] {
            assert_eq!(normalize_phone(bad), Err(ContactError::InvalidPhone), "{bad}");
        }
    }

    #[test]
    fn emails_are_checked_and_domain_lowercased() {
        assert_eq!(normalize_email(" Kim@Example.COM ").unwrap(), "Kim@example.com");
        for bad in ["", "kim", "kim@", "@example.com", "kim@example", "kim@exa mple.com", "a@b..com"] {
            assert_eq!(normalize_email(bad), Err(ContactError::InvalidEmail), "{bad}");
        }
    }

    #[test]
    fn masking_hides_the_middle() {
        assert_eq!(mask("+821012345678"), "+82***78");
        assert_eq!(mask("abc"), "***");
    }
}
