//! `Lines`: a batch of records in one buffer, each followed by a newline, as the spool reads
//! them and sinks get them.
//!
//! Warm path (once per delivery batch): two allocations per batch (the bytes and the record
//! ends) instead of one per record, made and freed on the delivery thread. A file sink writes the
//! buffer as it is (it already is JSON lines); other sinks take the records one by one.

/// Records in one buffer, in order, each followed by `\n` (a record holds no newline: the spool
/// frames each as one JSON line).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Lines {
    /// The records, each followed by a newline.
    bytes: Vec<u8>,
    /// Where each record ends in `bytes` (its newline excluded), bytes.
    ends: Vec<usize>,
}

impl Lines {
    /// Empty, with room for `records` records of `bytes` bytes in all (newlines not included).
    #[must_use]
    pub fn with_capacity(records: usize, bytes: usize) -> Lines {
        Lines { bytes: Vec::with_capacity(bytes + records), ends: Vec::with_capacity(records) }
    }

    /// Append `record` (and its newline).
    pub fn push(&mut self, record: &[u8]) {
        self.bytes.extend_from_slice(record);
        self.ends.push(self.bytes.len());
        self.bytes.push(b'\n');
    }

    /// Records held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no record.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Record `i` (without its newline).
    #[must_use]
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let end = *self.ends.get(i)?;
        let start = match i.checked_sub(1) {
            Some(before) => self.ends.get(before)? + 1,
            None => 0,
        };
        self.bytes.get(start..end)
    }

    /// The records in order, without their newlines.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(|i| self.get(i).unwrap_or_default())
    }

    /// Every record followed by a newline: JSON lines, ready for a file.
    #[must_use]
    pub fn as_json_lines(&self) -> &[u8] {
        &self.bytes
    }

    /// The records as separate vectors (for tests and callers that keep records one by one).
    #[must_use]
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.iter().map(<[u8]>::to_vec).collect()
    }
}

impl<R: AsRef<[u8]>> FromIterator<R> for Lines {
    fn from_iter<I: IntoIterator<Item = R>>(records: I) -> Lines {
        let mut lines = Lines::default();
        for r in records {
            lines.push(r.as_ref());
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_as_pushed_and_as_json_lines() {
        let lines: Lines = [&b"{\"a\":1}"[..], b"", b"{}"].into_iter().collect();
        assert_eq!((lines.len(), lines.is_empty()), (3, false));
        assert_eq!(lines.to_vecs(), vec![b"{\"a\":1}".to_vec(), vec![], b"{}".to_vec()]);
        assert_eq!(lines.get(2), Some(&b"{}"[..]));
        assert_eq!(lines.get(3), None);
        assert_eq!(lines.as_json_lines(), b"{\"a\":1}\n\n{}\n");
        assert_eq!(lines.iter().len(), 3);
        let empty = Lines::with_capacity(4, 100);
        assert!(empty.is_empty() && empty.as_json_lines().is_empty() && empty.get(0).is_none());
    }
}
