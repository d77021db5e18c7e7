//! FHIR search (http://hl7.org/fhir/R4/search.html), driven by the official SearchParameter
//! definitions that `fhir_models` carries.
//!
//! - [`fhirpath`]: the subset of FHIRPath the definitions' expressions use.
//! - [`index`]: the index rows a resource gives, written with it in one transaction.
//! - [`dates`]: FHIR dates as the ranges they cover.
//! - [`query`]: a search request parsed into filters, sort keys, paging and includes.
//! - [`sql`]: the SQL of a parsed search, one text for both databases.
//! - [`execute`]: a page of results, with includes, totals and cursors.
//! - [`compartment`]: a page of a Patient's compartment, for `$everything`.

pub mod compartment;
pub mod dates;
pub mod execute;
pub mod fhirpath;
pub mod index;
pub mod query;
pub mod sql;

use unicode_normalization::UnicodeNormalization as _;
use unicode_normalization::char::is_combining_mark;

/// Longest text an index row holds, in bytes. Index entries have a size limit (PostgreSQL's
/// B-tree refuses rows over ~2.7 kB), and no search needs more: a longer value is indexed by
/// its first 256 bytes, and search values are cut the same way.
pub const MAX_INDEXED_TEXT: usize = 256;

/// `text` cut to [`MAX_INDEXED_TEXT`] bytes, at a character boundary.
pub fn indexed(text: &str) -> &str {
    if text.len() <= MAX_INDEXED_TEXT {
        return text;
    }
    let mut end = MAX_INDEXED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The form string search compares: lower case, accents removed (`Müller` → `muller`).
pub fn normalize(text: &str) -> String {
    indexed(text)
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize_folds_case_and_accents() {
        assert_eq!(super::normalize("René MÜLLER"), "rene muller");
    }

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        let long = "é".repeat(200);
        let cut = super::indexed(&long);
        assert!(cut.len() <= super::MAX_INDEXED_TEXT && long.starts_with(cut));
    }
}
