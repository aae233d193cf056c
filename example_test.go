package tiered_test

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/tieredcache/tiered"
)

// A cache with only a Loader is a near-cache in front of the source of truth. Add
// Options.Addrs (or Nodes, or Client) to share values between replicas through Redis.
func Example() {
	users := map[string]string{"42": "Ada Lovelace"} // stands in for a database
	loads := 0
	c, err := tiered.New(tiered.Options[string]{
		Loader: tiered.LoaderFunc[string](func(ctx context.Context, id string) (string, error) {
			loads++
			name, ok := users[id]
			if !ok {
				return "", tiered.ErrNotFound
			}
			return name, nil
		}),
	})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	ctx := context.Background()
	name, err := c.Get(ctx, "42")
	fmt.Println(name, err)
	_, err = c.Get(ctx, "7")
	fmt.Println(errors.Is(err, tiered.ErrNotFound))
	fmt.Println("loads:", loads)
	// Output:
	// Ada Lovelace <nil>
	// true
	// loads: 2
}

// Set and Delete write through the cache: a Get that follows in the same process
// sees the write, whatever the near-cache's buffering.
func ExampleCache_Set() {
	c, err := tiered.New(tiered.Options[[]byte]{})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	ctx := context.Background()

	if err := c.Set(ctx, "greeting", []byte("hello")); err != nil {
		panic(err)
	}
	if err := c.Set(ctx, "greeting", []byte("bonjour")); err != nil {
		panic(err)
	}
	v, err := c.Get(ctx, "greeting")
	fmt.Println(string(v), err)

	if err := c.Delete(ctx, "greeting"); err != nil {
		panic(err)
	}
	_, err = c.Get(ctx, "greeting") // no Loader: a miss is ErrNotFound
	fmt.Println(errors.Is(err, tiered.ErrNotFound))
	// Output:
	// bonjour <nil>
	// true
}

// GetMany answers what it can from the tiers and loads the rest in one BatchLoader
// call. Keys absent at the source are left out of the map.
func ExampleCache_GetMany() {
	type product struct {
		Name  string
		Cents int
	}
	catalog := map[string]product{"p1": {"pen", 150}, "p2": {"ink", 900}}
	c, err := tiered.New(tiered.Options[product]{
		BatchLoader: tiered.BatchLoaderFunc[product](func(ctx context.Context, ids []string) (map[string]product, error) {
			fmt.Println("batch load:", strings.Join(ids, ","))
			out := make(map[string]product)
			for _, id := range ids {
				if p, ok := catalog[id]; ok {
					out[id] = p
				}
			}
			return out, nil
		}),
	})
	if err != nil {
		panic(err)
	}
	defer c.Close()

	got, err := c.GetMany(context.Background(), []string{"p1", "p2", "p9"})
	fmt.Println(len(got), got["p1"].Name, got["p2"].Cents, err)
	// Output:
	// batch load: p1,p2,p9
	// 2 pen 900 <nil>
}
