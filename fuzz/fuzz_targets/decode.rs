//! Any datagram: parsing never panics, the zero-copy view and the owned parse agree, and a
//! parsed message re-encodes to exactly the input.

#![no_main]

use bytes::Bytes;
use coap_proto::msg::{parse_header, Message, MessageView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let header = parse_header(data);
    assert_eq!(header.is_ok(), data.len() >= 4);

    let view = MessageView::parse(data);
    let owned = Message::parse(data);
    let shared = Message::parse_bytes(&Bytes::copy_from_slice(data));
    assert_eq!(view.is_ok(), owned.is_ok());
    assert_eq!(owned, shared);
    let (Ok(view), Ok(message)) = (view, owned) else {
        return;
    };

    let header = header.expect("a parsed message has a header");
    assert_eq!(header.mtype, view.mtype());
    assert_eq!(header.code, view.code());
    assert_eq!(header.message_id, view.message_id());

    // Accessors and validation never fail.
    let _ = view.validate_options();
    let _ = message.options.validate();
    let mut previous = 0;
    for (number, _) in view.options() {
        assert!(number.0 >= previous, "options come in wire order");
        previous = number.0;
        assert!(view.option(number).is_some());
    }
    assert_eq!(view.to_message(), message);

    // The wire format has one encoding per message (extended lengths never overlap the short
    // ones, and the payload marker appears only before a payload), so re-encoding a parsed
    // message gives back exactly the input.
    let mut buf = vec![0u8; message.encoded_len()];
    let len = message.encode(&mut buf).expect("a parsed message encodes");
    assert_eq!(len, buf.len());
    assert_eq!(buf, data);
});
