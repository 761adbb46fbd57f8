package shapes

import "fmt"

const Pi = 3.14

const (
	A, B = 1, 2
	C    = 3
)

type Point struct {
	X, Y int
}

type Shape interface {
	Area() float64
}

type ID = string

type Celsius float64

type List[T any] struct{}

func New() *Point { return &Point{} }

func (p *Point) Move(dx int) {
	const step = 1
	fmt.Println(step)
}

func (l List[T]) Len() int { return 0 }
