// Package federation runs the showcase federation end to end on one machine: a wattagg
// aggregation server (package server, started in process and served over HTTP on a loopback
// port), clients that train the digits MLP with gorgonia on non-IID shards and push their
// models to it with the server's Go client, and an inference node that pulls each round's
// global model, reloads it into an HTTP prediction service (package serving) while requests
// keep arriving, and measures held-out accuracy through that service.
//
// Everything crosses the same boundaries it would across machines: clients authenticate with
// their own bearer tokens, updates travel as .safetensors bodies over HTTP and are acknowledged
// only once durable, the server's round engine aggregates each round when its last client has
// pushed, and the round's report (seconds, bytes, joules with their provenance) is read back
// from the server's API. Only the processes are one: the server runs in this process (the
// wattagg CLI has no serve command to start as a child), which also lets a test run the whole
// federation.
//
// Run is one federation (one rule, optionally with poisoned clients); RunTable runs the attack
// table (every rule against every attack); Plot and WriteTable write what a reader looks at.
package federation
