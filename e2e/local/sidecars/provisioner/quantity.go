package main

import "k8s.io/apimachinery/pkg/api/resource"

func resourceQuantity(bytes int64) *resource.Quantity {
	return resource.NewQuantity(bytes, resource.BinarySI)
}
