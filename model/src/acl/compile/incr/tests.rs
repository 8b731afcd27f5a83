use xdpgate_common::acl::Bitmap;

use super::rules::{insert_bit, remove_bit, summarize};

#[test]
fn bit_columns_go_in_and_out_at_any_position() {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for pos in [0usize, 1, 63, 64, 65, 500, 4095, 4096, 12_000] {
        let mut b = Bitmap::EMPTY;
        for w in b.words.iter_mut().take(190) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *w = x;
        }
        summarize(&mut b);
        let before = b;
        insert_bit(&mut b, pos, true);
        let bit = |b: &Bitmap, i: usize| b.words[i / 64] >> (i % 64) & 1;
        assert_eq!(bit(&b, pos), 1, "inserted at {pos}");
        for i in [0, pos.saturating_sub(1), pos + 1, pos + 64, 12_100] {
            if i != pos {
                let want = if i < pos {
                    bit(&before, i)
                } else {
                    bit(&before, i - 1)
                };
                assert_eq!(bit(&b, i), want, "bit {i} after inserting at {pos}");
            }
        }
        remove_bit(&mut b, pos);
        assert_eq!(b, before, "round trip at {pos}");
    }
}
