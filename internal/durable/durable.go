// Package durable holds what wattagg's writers share to make files durable.
package durable
