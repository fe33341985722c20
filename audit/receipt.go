package audit

// Receipt is the proof that the audit store acknowledged a record: the
// stream id it was stored under and the request it belongs to. Its fields
// are unexported, so outside this package a Receipt comes only from a
// successful Sink.Append (Stream.Append, or a test sink's, built with
// ReceiptForTest). The proxy forwards a call only with the receipt of its decision record,
// so "nothing forwarded unrecorded" is a matter of types, not of
// statement order.
type Receipt struct {
	id        string
	requestID string
}

// ID is the stream id of the stored record.
func (r Receipt) ID() string { return r.id }

// For reports whether r acknowledges the decision record of request id:
// false for the zero Receipt (which proves nothing) and for another
// request's receipt.
func (r Receipt) For(requestID string) bool {
	return r.id != "" && r.requestID == requestID
}

// receiptOf is the receipt of rec, stored under id.
func receiptOf(id string, rec *Record) Receipt {
	return Receipt{id: id, requestID: rec.RequestID}
}

// ReceiptForTest is the receipt an in-process sink returns for rec, which it
// has kept under id (non-empty): for test sinks and benchmarks only. A
// sink that hands a record to a store must return that store's receipt,
// never this.
func ReceiptForTest(id string, rec *Record) Receipt {
	if id == "" {
		id = "0-0"
	}
	return receiptOf(id, rec)
}
