/** Types of the `tidewire.v1` channel protocol (docs/protocol.md) as this library exposes them. */
export {};
