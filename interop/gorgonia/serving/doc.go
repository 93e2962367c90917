// Package serving answers digit predictions over HTTP from a global model that can be replaced
// while requests run: the inference node of the federation showcase. The model is loaded zero
// copy (a mapped .safetensors file viewed by gorgonia Dense values, see package mlp) and
// published through an atomic pointer; each request holds a reference to the model it started
// with, so a reload never fails or drops a request, and a replaced model's mapping is released
// when its last request finishes.
package serving
