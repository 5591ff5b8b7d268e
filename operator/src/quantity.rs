//! Kubernetes quantities ("10Gi", "500M", "1e9") as byte counts, for the
//! node's `--max-db-bytes`. k8s-openapi keeps quantities as strings.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("{0:?} is not a quantity; write a size such as 512Mi, 10Gi or 1G")]
    Malformed(String),
    #[error("{0:?} is negative; a size must be positive")]
    Negative(String),
    #[error("{0:?} is larger than 2^64 bytes")]
    TooLarge(String),
}

/// Longest quantity string accepted: far beyond any real size, and it keeps
/// the arithmetic below in range.
const MAX_QUANTITY_CHARS: usize = 64;

/// Bytes in `quantity`, rounded up to a whole byte as Kubernetes does.
pub fn bytes(quantity: &Quantity) -> Result<u64, QuantityError> {
    let text = quantity.0.trim();
    let malformed = || QuantityError::Malformed(text.to_owned());
    if text.is_empty() || text.len() > MAX_QUANTITY_CHARS {
        return Err(malformed());
    }
    let (negative, unsigned) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(malformed());
    }
    let digits = format!("{whole}{fraction}");
    let mantissa: u128 = digits.parse().map_err(|_| malformed())?;
    // value = mantissa * numerator / denominator
    let mut numerator: u128 = 1;
    let mut denominator: u128 = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| malformed())?);
    match suffix {
        "" => {}
        "m" => denominator *= 1000,
        "k" => numerator = 1000,
        "M" => numerator = 1000u128.pow(2),
        "G" => numerator = 1000u128.pow(3),
        "T" => numerator = 1000u128.pow(4),
        "P" => numerator = 1000u128.pow(5),
        "E" => numerator = 1000u128.pow(6),
        "Ki" => numerator = 1 << 10,
        "Mi" => numerator = 1 << 20,
        "Gi" => numerator = 1 << 30,
        "Ti" => numerator = 1 << 40,
        "Pi" => numerator = 1 << 50,
        "Ei" => numerator = 1 << 60,
        exponent if exponent.starts_with(['e', 'E']) => {
            let power: i32 = exponent[1..].parse().map_err(|_| malformed())?;
            if power.unsigned_abs() > 30 {
                return Err(QuantityError::TooLarge(text.to_owned()));
            }
            let factor = 10u128.pow(power.unsigned_abs());
            if power >= 0 {
                numerator = factor;
            } else {
                denominator *= factor;
            }
        }
        _ => return Err(malformed()),
    }
    let scaled = mantissa
        .checked_mul(numerator)
        .ok_or_else(|| QuantityError::TooLarge(text.to_owned()))?;
    let value = scaled.div_ceil(denominator);
    if negative && value > 0 {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    u64::try_from(value).map_err(|_| QuantityError::TooLarge(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(text: &str) -> Result<u64, QuantityError> {
        bytes(&Quantity(text.to_owned()))
    }

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(b("10Gi"), Ok(10 << 30));
        assert_eq!(b("512Mi"), Ok(512 << 20));
        assert_eq!(b("1G"), Ok(1_000_000_000));
        assert_eq!(b("1500k"), Ok(1_500_000));
        assert_eq!(b("4096"), Ok(4096));
        assert_eq!(b("1e9"), Ok(1_000_000_000));
        assert_eq!(b("1.5Gi"), Ok(1536 << 20));
        assert_eq!(b("+2Ki"), Ok(2048));
    }

    #[test]
    fn fractions_round_up_to_whole_bytes() {
        assert_eq!(b("1500m"), Ok(2));
        assert_eq!(b("0.1"), Ok(1));
        assert_eq!(b("25e-1"), Ok(3));
    }

    #[test]
    fn malformed_negative_and_huge_quantities_are_refused() {
        assert!(matches!(b("ten"), Err(QuantityError::Malformed(_))));
        assert!(matches!(b("10GB"), Err(QuantityError::Malformed(_))));
        assert!(matches!(b(""), Err(QuantityError::Malformed(_))));
        assert!(matches!(b("."), Err(QuantityError::Malformed(_))));
        assert!(matches!(b("-1Gi"), Err(QuantityError::Negative(_))));
        assert!(matches!(b("20Ei"), Err(QuantityError::TooLarge(_))));
        assert!(matches!(b("1e40"), Err(QuantityError::TooLarge(_))));
    }
}
